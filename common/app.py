"""The Tornado application shared shape: a service's routes plus health, readiness and metrics."""
from collections.abc import Awaitable, Callable

from tornado import web

from common.auth import Authenticator
from common.config import Settings
from common.envelope import NotFoundHandler
from common.health import HealthHandler, ServiceReadyHandler
from common.metrics import MetricsHandler, log_request


def service_application(routes: list, settings: Settings, db, broker, backlog: Callable[..., Awaitable[dict]],
                        auth: Authenticator) -> web.Application:
    """`routes` plus `/health`, `/ready` (PostgreSQL + RabbitMQ + the issuer's keys) and `/metrics` (with
    `backlog` gauges).

    Every handler gets its dependencies through `initialize`, the body limit and the `auth` of the API's
    routes among them."""
    limit = dict(max_body_bytes=settings.max_body_bytes)
    return web.Application([
        *((pattern, handler, {**deps, "auth": auth, **limit}) for pattern, handler, deps in routes),
        (r"/health", HealthHandler, limit),
        (r"/ready", ServiceReadyHandler, dict(db=db, broker=broker, auth=auth, **limit)),
        (r"/metrics", MetricsHandler, dict(db=db, backlog=backlog, broker=broker, **limit)),
    ], default_handler_class=NotFoundHandler, default_handler_args=limit, log_function=log_request)
