"""Logging set-up: plain text, or one JSON object per line when LOG_FORMAT=json."""
import contextvars
import json
import logging
import sys

# The X-Request-ID of the HTTP request being handled, so every log line about it can carry it.
request_id = contextvars.ContextVar("request_id", default="-")
# The OpenTelemetry trace id (32 hex digits) of the request being handled; set only while tracing is on.
trace_id = contextvars.ContextVar("trace_id", default="-")


class RequestIdFilter(logging.Filter):
    def filter(self, record):
        record.request_id = request_id.get()
        if not hasattr(record, "trace_id"):  # a line about one order of a batch may name that order's trace
            record.trace_id = trace_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "request_id": record.request_id, "message": record.getMessage()}
        if record.trace_id != "-":
            entry["trace_id"] = record.trace_id
        if order_id := getattr(record, "order_id", None):
            entry["order_id"] = order_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(settings, service, traced=False):
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
