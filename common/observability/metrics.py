"""Prometheus metrics of a process, served at `GET /metrics`."""
import logging
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from tornado import web
from tornado.log import access_log

if TYPE_CHECKING:  # at run time each imports this module (its counters): only the checker needs them here
    pass

logger = logging.getLogger(__name__)

REQUESTS = Histogram("shop_http_request_duration_seconds", "HTTP requests by handler, method and status.",
                     ["handler", "method", "status"])
PUBLISHED = Counter("shop_messages_published", "Messages confirmed by the broker.", ["queue"])
ROWS_PUBLISHED = Counter("shop_outbox_rows_published", "Outbox rows whose message the broker confirmed (several may "
                         "share a message: ENTRIES_PER_MESSAGE).", ["queue"])
PUBLISH_FAILED = Counter("shop_messages_publish_failed", "Publishes the broker did not confirm.", ["queue"])
CONSUMED = Counter("shop_messages_consumed", "Messages processed and acked.", ["queue"])
ENTRIES_CONSUMED = Counter("shop_entries_consumed", "Entries of the messages acked (one per message unless "
                           "several rows shared it).", ["queue"])
DEAD_LETTERED = Counter("shop_messages_dead_lettered", "Dead letters published to the dead-letter queue (a whole "
                        "message, or one malformed entry of a message of several).", ["queue"])
RECONNECTS = Counter("shop_broker_reconnects", "Times the broker connection was re-established.")
PENDING = Gauge("shop_pending_rows", "Rows waiting in an outbox or inbox.", ["table"])
OLDEST_PENDING = Gauge("shop_oldest_pending_age_seconds", "Age of the oldest waiting row.", ["table"])
# Both refreshed at each scrape, like the backlog gauges. READY is registered by the first scrape that sets it:
# a gauge reads 0 until set, and the gateway (no database, no broker) must not read as "not ready".
READY = Gauge("shop_ready", "1 if PostgreSQL and RabbitMQ answered this scrape, else 0.", registry=None)
DEAD_LETTERS = Gauge("shop_dead_letter_queue_messages", "Messages waiting in the queue's dead-letter queue.",
                     ["queue"])
# Blocking reads (GET /orders/{id}?wait=N, POST /orders with Prefer: wait=N).
WAITING = Gauge("shop_waiting_requests", "Requests held open for an order's outcome: the Order Service's waiters; "
                "the gateway's waiting requests forwarded and not yet answered.")
WAITS_ENDED = Counter("shop_waits_ended", "Waits that ended, by how: final (the order's outcome came), timeout, "
                      "client_left, shutdown.", ["outcome"])
WAKE_UPS = Counter("shop_wait_wakeups", "Waiters woken by an order's final status, by what told: local (this "
                   "process applied the result), notification (LISTEN: another replica did) or reread (the orders "
                   "waited for, read again after notifications may have been missed).", ["by"])
WAITS_REFUSED = Counter("shop_waits_refused", "Requests answered at once rather than held, by the cap they met: "
                        "process or user (MAX_WAITING, MAX_WAITING_PER_USER), gateway (WAIT_POOL_SIZE).", ["cap"])
NOTIFICATIONS = Counter("shop_order_notifications", "NOTIFYs of final orders received on the LISTEN connection.")
LISTENING = Gauge("shop_listen_connected", "1 while the LISTEN connection that wakes waiters is up, else 0.")
LISTEN_CONNECTS = Counter("shop_listen_connects", "Times the LISTEN connection was (re-)established.")
TASKS = Gauge("shop_event_loop_tasks", "asyncio tasks alive in the process (a leak shows as growth).")


# The `method` label of REQUESTS: a request line's method is the client's to choose, and each new value would be a
# new series kept for the process's life; anything but the methods HTTP defines counts as OTHER.
KNOWN_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


_exported: set[str] = set()  # the names of the metrics registered on first use


def set_ready(ready: bool) -> None:
    if "ready" not in _exported:
        REGISTRY.register(READY)
        _exported.add("ready")
    READY.set(1 if ready else 0)


def log_request(handler: web.RequestHandler) -> None:
    """Tornado `log_function`: count and time the request, and write Tornado's usual access log line."""
    status, request = handler.get_status(), handler.request
    REQUESTS.labels(type(handler).__name__, method_label(request.method), status).observe(request.request_time())
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    access_log.log(level, "%d %s %s (%s) %.2fms", status, request.method, request.uri, request.remote_ip,
                   1000 * request.request_time())
