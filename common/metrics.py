"""Prometheus metrics of a process, served at `GET /metrics`."""
import logging

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from tornado.log import access_log

from common.envelope import BaseHandler
from common.errors import Unavailable

logger = logging.getLogger(__name__)

REQUESTS = Histogram("shop_http_request_duration_seconds", "HTTP requests by handler, method and status.",
                     ["handler", "method", "status"])
PUBLISHED = Counter("shop_messages_published", "Messages confirmed by the broker.", ["queue"])
PUBLISH_FAILED = Counter("shop_messages_publish_failed", "Publishes the broker did not confirm.", ["queue"])
CONSUMED = Counter("shop_messages_consumed", "Messages processed and acked.", ["queue"])
DEAD_LETTERED = Counter("shop_messages_dead_lettered", "Messages rejected to the dead-letter queue.", ["queue"])
RECONNECTS = Counter("shop_broker_reconnects", "Times the broker connection was re-established.")
PENDING = Gauge("shop_pending_rows", "Rows waiting in an outbox or inbox.", ["table"])
OLDEST_PENDING = Gauge("shop_oldest_pending_age_seconds", "Age of the oldest waiting row.", ["table"])


def log_request(handler):
    """Tornado `log_function`: count and time the request, and write Tornado's usual access log line."""
    status, request = handler.get_status(), handler.request
    REQUESTS.labels(type(handler).__name__, request.method, status).observe(request.request_time())
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    access_log.log(level, "%d %s %s (%s) %.2fms", status, request.method, request.uri, request.remote_ip,
                   1000 * request.request_time())


class MetricsHandler(BaseHandler):
    """Metrics in Prometheus text format; `backlog(cur)` returns {table: (pending rows, oldest age in s)}."""

    db = backlog = None  # the gateway's has neither

    async def get(self):
        if self.backlog:
            try:
                for table, (count, age) in (await self.db.run(self.backlog, retry_seconds=0)).items():
                    PENDING.labels(table).set(count)
                    OLDEST_PENDING.labels(table).set(age or 0)
            except Unavailable:
                logger.warning("backlog gauges not refreshed: database unavailable")
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())
