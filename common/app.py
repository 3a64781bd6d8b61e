"""The Tornado application shared shape: a service's routes plus health, readiness and metrics."""
from tornado import web

from common.envelope import NotFoundHandler
from common.health import HealthHandler, ReadyHandler
from common.metrics import MetricsHandler, log_request


def service_application(routes, db, broker, backlog):
    """`routes` plus `/health`, `/ready` (PostgreSQL + RabbitMQ) and `/metrics` (with `backlog` gauges)."""
    return web.Application([
        *routes,
        (r"/health", HealthHandler),
        (r"/ready", ReadyHandler, dict(db=db, broker=broker)),
        (r"/metrics", MetricsHandler, dict(db=db, backlog=backlog, broker=broker)),
    ], default_handler_class=NotFoundHandler, log_function=log_request)
