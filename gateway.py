"""API gateway: routes the six public requests to the Order and Payments services, nothing else.

Backend status and body pass through unchanged, and so do the backend's `Etag` and its 304 to an
`If-None-Match`; a HEAD is answered wherever a GET is, as that GET without its body. An unreachable or
timed-out backend is a 503 envelope. Several backend URLs per service are used in turn, skipping one that
refuses connections.

One path serves the API: `proxy.server.ProxyServer` reads each request on Tornado's HTTP/1.1 layer and applies
every rule of the gateway in one place (request ids, body limit, content type, 405s, access log, metrics); only
the gateway's own paths (`/health`, `/openapi.yaml`, the 404 of any other) are Tornado `RequestHandler`s."""
import asyncio
import functools
import itertools
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tornado import web

from common.domain.errors import Unavailable
from common.observability import tracing
from common.observability.metrics import WAITING, WAITS_REFUSED, log_request
from common.runtime.config import Settings
from common.runtime.lifecycle import Service, run
from common.web.app import admin_application
from common.web.envelope import BaseHandler, NotFoundHandler
from common.web.health import HealthHandler
from common.web.http_server import listen
from common.web.waiting import PREFER, PREFERENCE_APPLIED, without_wait
from proxy.http_client import FETCH_ERRORS, KeepAliveClient
from proxy.response import Response
from proxy.server import ProxyServer, Route

logger = logging.getLogger("gateway")

# If-None-Match too: the backend's Etag passes back, so the backend can answer a 304 for it. The W3C trace
# context passes through as well, or, with tracing on, continued by the gateway's span (`Backend.forward`).
# `Authorization` too: each service verifies the client's bearer token itself (common.web.auth).
# `Prefer` too (RFC 7240: `POST /orders` with `Prefer: wait=N`), and its `Preference-Applied` comes back.
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "Authorization", "Idempotency-Key", "If-None-Match",
                             "traceparent", "tracestate", PREFER)
# The backend's response headers a client gets: its body's type, the Etag that a client's If-None-Match names,
# a 401's or 403's challenge (RFC 6750), and the preferences applied.
PASSED_BACK_HEADERS = ("Content-Type", "Etag", "WWW-Authenticate", PREFERENCE_APPLIED)
CONNECT_TIMEOUT = 2


class Backend:
    """One service's replicas, taken round-robin, reached through `client`; a waiting request (a blocking read,
    `common.web.waiting.requested_wait`) through `wait_client`, at most `max_waiting` at once."""

    def __init__(self, name: str, urls: tuple[str, ...], timeout: float, client: KeepAliveClient,
                 wait_client: KeepAliveClient, max_waiting: int) -> None:
        self.name = name
        self.unavailable = f"{name} temporarily unavailable."
        self.urls = urls
        self.timeout = timeout
        self.client = client
        self.wait_client, self.max_waiting = wait_client, max_waiting
        self.waiting = 0
        self._next = itertools.cycle(range(len(urls)))

    def candidates(self) -> tuple[str, ...]:
        start = next(self._next)
        return self.urls[start:] + self.urls[:start]

    async def forward(self, method: str, uri: str, headers: dict[str, str], body: bytes | None, wait: int | None,
                      template: str) -> Response:
        """The first replica's response to the request of route `template`, which asks to be held `wait` seconds
        (`common.web.waiting.requested_wait`, None: not at all), in a SERVER span when tracing is on (its trace
        context goes on in `headers`); raises `Unavailable` (the 503) if none answers.

        This is the one place that maps upstream failures: only a refused connection moves on to the next
        replica."""
        # A HEAD is asked as its GET (RFC 9110: the same headers, no content; the reply drops the body): the
        # backends need no HEAD of their own, and the Content-Length and Etag are the GET's by construction.
        upstream_method = "GET" if method == "HEAD" else method
        uri, headers, wait = self.waits(uri, headers, wait)
        # A waiting request may take its wait and UPSTREAM_TIMEOUT more, on connections of its own; any other
        # only UPSTREAM_TIMEOUT, so that a dead backend is still noticed within it.
        client, timeout = (self.wait_client, self.timeout + wait) if wait else (self.client, self.timeout)
        with tracing.current.server(method, template, headers) as span, self.holding(wait):
            for url in self.candidates():
                try:
                    response = await client.fetch(url + uri, upstream_method, headers, body, timeout=timeout,
                                                  connect_timeout=CONNECT_TIMEOUT)
                except FETCH_ERRORS as exc:
                    if isinstance(exc, ConnectionRefusedError):
                        continue  # the request surely never reached this replica: another may take it
                    logger.warning("%s %s failed: %r", method, url + uri, exc)
                    raise Unavailable(self.unavailable) from None
                span.set_status_code(response.code)
                return response
            logger.warning("no replica of %s reachable", self.urls)
            raise Unavailable(self.unavailable)

    def waits(self, uri: str, headers: dict[str, str], wait: int | None) -> tuple[str, dict[str, str], int | None]:
        """(uri, headers, seconds the backend may hold the request or None): beyond `max_waiting` waiting requests
        in flight, the request goes on without its wait, answered at once like one beyond the service's caps."""
        if not wait or self.waiting < self.max_waiting:
            return uri, headers, wait
        WAITS_REFUSED.labels("gateway").inc()
        return without_wait(uri), {name: value for name, value in headers.items() if name != PREFER}, None

    @contextmanager
    def holding(self, wait: int | None) -> Iterator[None]:
        """Counts a waiting request in flight while the block runs."""
        if not wait:
            yield
            return
        self.waiting += 1
        WAITING.inc()
        try:
            yield
        finally:
            self.waiting -= 1
            WAITING.dec()


class GatewayReadyHandler(BaseHandler):
    """Ready when every service has at least one replica whose own `/ready` (on its admin port) says so;
    `services` is ((name, admin URLs), ...). Served on the gateway's admin port only: it names internal URLs."""
    services: tuple[tuple[str, tuple[str, ...]], ...]
    client: KeepAliveClient

    async def probe(self, url: str) -> str:
        try:
            response = await self.client.fetch(url + "/ready", timeout=2, connect_timeout=1)
            return "ready" if response.code == 200 else "not ready"
        except FETCH_ERRORS:
            return "unreachable"

    async def get(self) -> None:
        urls = [url for _, admin_urls in self.services for url in admin_urls]
        states = dict(zip(urls, await asyncio.gather(*(self.probe(url) for url in urls))))
        down = [name for name, admin_urls in self.services if all(states[url] != "ready" for url in admin_urls)]
        if down:
            self.reply(503, f"{' and '.join(down)} not ready.", backends=states)
        else:
            self.reply(200, "Ready.", backends=states)


OPENAPI_SPEC = Path(__file__).resolve().parent / "openapi.yaml"


class OpenApiHandler(BaseHandler):
    """The API's OpenAPI document, as the gateway was started with it."""
    spec: bytes

    def get(self) -> None:
        self.set_header("Content-Type", "application/yaml; charset=UTF-8")
        self.finish(self.spec)


def make_admin_app(settings: Settings, probe_client: KeepAliveClient | None = None) -> web.Application:
    """The admin port: `/health`, `/ready` and `/metrics`. `probe_client`, with pools of its own, asks the
    replicas' `/ready`: readiness must say whether the backends are up, not wait in line behind a burst of
    requests."""
    probe_client = probe_client or KeepAliveClient(pool_size=2)
    services = (("Order Service", settings.order_svc_admin_urls), ("Payments Service", settings.payment_svc_admin_urls))
    return admin_application(settings, (GatewayReadyHandler, dict(services=services, client=probe_client)), {})


def own_routes(settings: Settings) -> list[tuple[str, type[BaseHandler], dict[str, object]]]:
    """The gateway's own paths on its public port, served by `RequestHandler`s: (pattern, handler, dependencies)."""
    limit: dict[str, object] = dict(max_body_bytes=settings.max_body_bytes)
    return [(r"/health", HealthHandler, limit),
            (r"/openapi.yaml", OpenApiHandler, dict(spec=OPENAPI_SPEC.read_bytes(), **limit))]


def make_app(settings: Settings, client: KeepAliveClient | None = None,
             wait_client: KeepAliveClient | None = None) -> ProxyServer:
    """The public port, a `ProxyServer`: the API's routes (`client` forwards the requests, `wait_client` the
    waiting ones), and an `Application` of the gateway's own paths for every other request."""
    client = client or KeepAliveClient(settings.backend_pool_size)
    # Waiting requests hold their connections for up to MAX_WAIT seconds: a pool of their own, so that they never
    # take the connections every other request needs (the count per service keeps each replica's below its size).
    wait_client = wait_client or KeepAliveClient(settings.wait_pool_size)
    orders = Backend("Order Service", settings.order_svc_urls, settings.upstream_timeout, client, wait_client,
                     settings.wait_pool_size)
    payments = Backend("Payments Service", settings.payment_svc_urls, settings.upstream_timeout, client, wait_client,
                       settings.wait_pool_size)

    def route(template: str, backend: Backend, *methods: str) -> Route:
        """The route of `template` ("/orders/{order_id}": the name of its spans), any value in the braces;
        HEAD is allowed wherever GET is."""
        if "GET" in methods:
            methods = ("GET", "HEAD", *(method for method in methods if method != "GET"))
        return Route(re.compile(re.sub(r"\{\w+\}", "[^/]+", template)), methods,
                     functools.partial(backend.forward, template=template),
                     FORWARDED_REQUEST_HEADERS, PASSED_BACK_HEADERS)

    limit = dict(max_body_bytes=settings.max_body_bytes)
    own = web.Application(own_routes(settings), default_handler_class=NotFoundHandler, default_handler_args=limit,
                          log_function=log_request)
    return ProxyServer(own, [
        route("/orders", orders, "GET", "POST"),
        route("/orders/{order_id}", orders, "GET"),
        route("/payments", payments, "POST"),
        route("/payments/{user_id}", payments, "GET", "PUT"),
        route("/payments/{user_id}/movements", payments, "GET"),
    ], settings.max_body_bytes)


class Gateway(Service):
    name = "gateway"
    uvloop_safe = True  # no database driver: see common.runtime.lifecycle.run
    # What forwards requests and probes (`KeepAliveClient`'s `fetch`, `close` and errors): the benchmark
    # measures Tornado's own client in its place (bench/tornado_client_gateway.py).
    client_class = KeepAliveClient

    async def start(self) -> None:
        self.client = self.client_class(self.settings.backend_pool_size)
        self.wait_client = self.client_class(self.settings.wait_pool_size)
        self.probe_client = self.client_class(2)
        app = make_app(self.settings, self.client, self.wait_client)
        settings = self.settings
        self.admin_server = listen(make_admin_app(settings, self.probe_client), settings.gateway_admin_port,
                                   settings.admin_listen_address, settings)
        # Waiting requests hold a backend connection each, up to WAIT_POOL_SIZE per service.
        self.server = listen(app, settings.gateway_port, settings.gateway_listen_address, settings,
                             other_files=2 * settings.wait_pool_size)
        logger.info("gateway listening on %s:%s, admin on %s:%s", settings.gateway_listen_address, self.server.port,
                    settings.admin_listen_address, self.admin_server.port)

    async def stop(self) -> None:
        await super().stop()
        self.client.close()
        self.wait_client.close()
        self.probe_client.close()


if __name__ == "__main__":
    run(Gateway)
