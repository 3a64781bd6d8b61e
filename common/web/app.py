"""The Tornado applications of a service: its API (public port) and its admin port (probes and metrics).

The admin port is never published (compose) or exposed beyond monitoring (Kubernetes' network policies): its
readiness names internal state, and its metrics are for Prometheus, not for clients."""
from collections.abc import Awaitable, Callable
from typing import Any

from tornado import web

from common.broker.connection import Broker
from common.db.database import Database
from common.observability.metrics import log_request
from common.runtime.config import Settings
from common.web.auth import Authenticator
from common.web.envelope import NotFoundHandler
from common.web.health import HealthHandler, MetricsHandler, ServiceReadyHandler

# (path pattern, handler class, the handler's dependencies)
Route = tuple[str, type[web.RequestHandler], dict[str, Any]]


def service_application(routes: list[Route], settings: Settings, auth: Authenticator) -> web.Application:
    """`routes` plus `/health`. Every handler gets its dependencies through `initialize`, the body limit and
    `auth` among them."""
    limit = dict(max_body_bytes=settings.max_body_bytes)
    return web.Application([
        *((pattern, handler, {**deps, "auth": auth, **limit}) for pattern, handler, deps in routes),
        (r"/health", HealthHandler, limit),
    ], default_handler_class=NotFoundHandler, default_handler_args=limit, log_function=log_request)


def admin_application(settings: Settings, ready: tuple[type[web.RequestHandler], dict[str, Any]],
                      metrics: dict[str, Any]) -> web.Application:
    """`/health`, `/ready` (`ready`: its handler class and dependencies) and `/metrics` (`metrics`: the
    `MetricsHandler`'s dependencies)."""
    limit = dict(max_body_bytes=settings.max_body_bytes)
    ready_handler, ready_deps = ready
    return web.Application([
        (r"/health", HealthHandler, limit),
        (r"/ready", ready_handler, {**ready_deps, **limit}),
        (r"/metrics", MetricsHandler, {**metrics, **limit}),
    ], default_handler_class=NotFoundHandler, default_handler_args=limit, log_function=log_request)


def service_admin_application(settings: Settings, db: Database, broker: Broker, auth: Authenticator,
                              backlog: Callable[..., Awaitable[dict[str, tuple[int, float]]]]) -> web.Application:
    """The admin port of the Order or Payments Service: ready when PostgreSQL, RabbitMQ and the issuer's keys
    are; metrics with the `backlog` gauges."""
    return admin_application(settings, (ServiceReadyHandler, dict(db=db, broker=broker, auth=auth)),
                             dict(db=db, backlog=backlog, broker=broker))
