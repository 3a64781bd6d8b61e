"""Logging set-up: plain text, or one JSON object per line when LOG_FORMAT=json."""
import contextvars
import json
import logging
import sys
from typing import Any

from common.runtime.config import Settings

# The X-Request-ID of the HTTP request being handled, so every log line about it can carry it.
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# The OpenTelemetry trace id (32 hex digits) of the request being handled; set only while tracing is on.
trace_id: contextvars.ContextVar[str] = contextvars.ContextVar("trace_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        if not hasattr(record, "trace_id"):  # a line about one order of a batch may name that order's trace
            record.trace_id = trace_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # `request_id` and `trace_id` are set by `RequestIdFilter`, which the handler applies first.
        line: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                                "request_id": getattr(record, "request_id", "-"), "message": record.getMessage()}
        if (trace := getattr(record, "trace_id", "-")) != "-":
            line["trace_id"] = trace
        if order_id := getattr(record, "order_id", None):
            line["order_id"] = order_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(settings: Settings, service: str, traced: bool = False) -> None:
    """Log to stderr; with `traced` (tracing on) each text line names its trace id beside the request id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s {service} %(levelname)s %(name)s [%(request_id)s{' %(trace_id)s' if traced else ''}]: "
            "%(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    # Tornado logs every request at INFO; under load that is noise, failures are logged anyway.
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
