"""API gateway: routes the six public requests to the Order and Payments services, nothing else.

Backend status and body pass through unchanged; an unreachable or timed-out backend is a 503 envelope.
Several backend URLs per service are used in turn, skipping one that refuses connections."""
import asyncio
import itertools
import logging
import uuid
from pathlib import Path

from tornado import web

from common.envelope import REQUEST_ID_HEADER, BaseHandler, NotFoundHandler
from common.errors import Unavailable
from common.health import HealthHandler
from common.http_client import FETCH_ERRORS, KeepAliveClient
from common.lifecycle import Service, listen, run
from common.logs import request_id
from common.metrics import MetricsHandler, log_request

logger = logging.getLogger("gateway")

FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "Idempotency-Key")
CONNECT_TIMEOUT = 2


class Backend:
    """One service's replicas, taken round-robin."""

    def __init__(self, name, urls, timeout):
        self.name = name
        self.unavailable = f"{name} temporarily unavailable."
        self.urls = urls
        self.timeout = timeout
        self._next = itertools.cycle(range(len(urls)))

    def candidates(self):
        start = next(self._next)
        return self.urls[start:] + self.urls[:start]


class ProxyHandler(BaseHandler):
    """Forwards the request to `backend`; the route table decides which methods exist."""

    def prepare(self):
        super().prepare()
        if request_id.get() == "-":
            # The gateway is where a request enters the system: it names it for every log line downstream.
            request_id.set(uuid.uuid4().hex)
            self.set_header(REQUEST_ID_HEADER, request_id.get())
        if self.request.method not in self.methods:
            raise web.HTTPError(405)

    def allowed_methods(self):
        return list(self.methods)

    async def forward(self, *_):
        headers = {k: v for k in FORWARDED_REQUEST_HEADERS if (v := self.request.headers.get(k)) is not None}
        headers[REQUEST_ID_HEADER] = request_id.get()
        body = self.request.body if self.request.method in ("POST", "PUT") else None
        for url in self.backend.candidates():
            try:
                response = await self.client.fetch(url + self.request.uri, self.request.method, headers, body,
                                                   timeout=self.backend.timeout, connect_timeout=CONNECT_TIMEOUT)
            except FETCH_ERRORS as exc:
                if isinstance(exc, ConnectionRefusedError):
                    continue  # the request surely never reached this replica: another may take it
                logger.warning("%s %s failed: %r", self.request.method, url + self.request.uri, exc)
                raise Unavailable(self.backend.unavailable) from None
            self.set_status(response.code)
            if content_type := response.headers.get("Content-Type"):
                self.set_header("Content-Type", content_type)
            self.finish(response.body)
            return
        logger.warning("no replica of %s reachable", self.backend.urls)
        raise Unavailable(self.backend.unavailable)

    get = post = put = forward


class GatewayReadyHandler(BaseHandler):
    """Ready when every service has at least one replica whose own `/ready` says so."""

    async def probe(self, url):
        try:
            response = await self.client.fetch(url + "/ready", timeout=2, connect_timeout=1)
            return "ready" if response.code == 200 else "not ready"
        except FETCH_ERRORS:
            return "unreachable"

    async def get(self):
        urls = [url for backend in self.backends for url in backend.urls]
        states = dict(zip(urls, await asyncio.gather(*(self.probe(url) for url in urls))))
        down = [b.name for b in self.backends if all(states[url] != "ready" for url in b.urls)]
        if down:
            self.reply(503, f"{' and '.join(down)} not ready.", backends=states)
        else:
            self.reply(200, "Ready.", backends=states)


OPENAPI_SPEC = Path(__file__).resolve().parent / "openapi.yaml"


class OpenApiHandler(BaseHandler):
    """The API's OpenAPI document, as the gateway was started with it."""

    def get(self):
        self.set_header("Content-Type", "application/yaml; charset=UTF-8")
        self.finish(self.spec)


def make_app(settings, client=None):
    client = client or KeepAliveClient()
    orders = Backend("Order Service", settings.order_svc_urls, settings.upstream_timeout)
    payments = Backend("Payments Service", settings.payment_svc_urls, settings.upstream_timeout)

    def route(pattern, backend, *methods):
        return pattern, ProxyHandler, dict(backend=backend, methods=methods, client=client,
                                            max_body_bytes=settings.max_body_bytes)

    return web.Application([
        route(r"/orders", orders, "GET", "POST"),
        route(r"/orders/[^/]+", orders, "GET"),
        route(r"/payments", payments, "POST"),
        route(r"/payments/[^/]+", payments, "GET", "PUT"),
        route(r"/payments/[^/]+/movements", payments, "GET"),
        (r"/health", HealthHandler),
        (r"/ready", GatewayReadyHandler, dict(backends=(orders, payments), client=client)),
        (r"/metrics", MetricsHandler),
        (r"/openapi.yaml", OpenApiHandler, dict(spec=OPENAPI_SPEC.read_bytes())),
    ], default_handler_class=NotFoundHandler, log_function=log_request)


class Gateway(Service):
    name = "gateway"
    uvloop_safe = True  # no database driver: see common.lifecycle.run

    async def start(self):
        self.client = KeepAliveClient()
        self.server = listen(make_app(self.settings, self.client), self.settings.gateway_port)
        logger.info("gateway listening on port %s", self.settings.gateway_port)

    async def stop(self):
        await super().stop()
        self.client.close()


if __name__ == "__main__":
    run(Gateway)
