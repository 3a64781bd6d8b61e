"""`ProxyServer`: the gateway's proxied routes served on Tornado's HTTP/1.1 layer, without a `RequestHandler`.

A `RequestHandler` per request builds an `HTTPServerRequest`, parses arguments, runs `prepare`, the method,
`flush`, `finish` and an Etag over the body, and creates several tasks: most of the gateway's CPU per proxied
request. Here a request's headers and body go straight from Tornado's `HTTP1Connection` (through the public
`HTTPServerConnectionDelegate` / `HTTPMessageDelegate` interfaces) to `Route.forward` and the answer straight
back, with the same checks and answers as `common.web.envelope.BaseHandler`: the request ids, the body limit (413),
the JSON content type (400), 405 with `Allow`, the 503 envelope, metrics and the access log; a blocking read's
wait is read once here and handed to the route. Every other path goes to the Tornado `Application` of the
gateway's own paths (404s, /health, /openapi.yaml)."""
import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http.client import responses
from re import Pattern
from typing import cast

import tornado
from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamClosedError
from tornado.log import access_log
from tornado.web import Application, RequestHandler

from common.domain.errors import MethodNotAllowed, ShopError
from common.domain.json_text import to_json
from common.observability.metrics import REQUESTS, method_label
from common.runtime.logs import request_id
from common.web.envelope import CLIENT_REQUEST_ID_HEADER, REQUEST_ID_HEADER, check_body, envelope, label
from common.web.waiting import PREFER, requested_wait
from proxy.response import Response

logger = logging.getLogger("common.web.envelope")  # the logger BaseHandler reports a 503 with

SERVER = f"TornadoServer/{tornado.version}"
JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
# The metrics label of proxied requests (the `handler` label of other requests names their RequestHandler class):
# dashboards and alerts select on it.
HANDLER_LABEL = "ProxyHandler"
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request whose client left before its answer (never sent)


_ID_PREFIX, _ID_COUNTER = secrets.token_hex(8), itertools.count()


def new_request_id() -> str:
    """32 hex digits, unique: this process's random prefix and a counter (a uuid4 costs a system call)."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


@dataclass(frozen=True)
class Route:
    """A path the gateway forwards: `forward(method, uri, headers, body, wait)` (`wait`: the seconds a blocking
    read asks to be held, or None) returns the backend's response (`code`, `headers`, `body`) or raises
    `ShopError` (503 `Unavailable`). Of the request's headers only `forwarded_headers` go to the backend, of the
    response's only `passed_back_headers` come back."""
    path: Pattern[str]
    methods: tuple[str, ...]
    forward: Callable[[str, str, dict[str, str], bytes | None, int | None], Awaitable[Response]]
    forwarded_headers: tuple[str, ...]
    passed_back_headers: tuple[str, ...]


def remote_ip(connection: HTTP1Connection) -> str | None:
    """The client's address as Tornado's `HTTPServer` gives it to each request (behind a trusted proxy, the
    forwarded one): read from the connection's documented `context` as Tornado's own `HTTPServerRequest` reads it,
    without building one per request."""
    return getattr(connection.context, "remote_ip", None)


class ProxyServer(httputil.HTTPServerConnectionDelegate):
    """Serves `routes` itself and passes every other request to `app`."""

    def __init__(self, app: Application, routes: list[Route], max_body_bytes: int) -> None:
        self.app, self.routes, self.max_body_bytes = app, routes, max_body_bytes
        self._date = (0, "")

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        # Tornado's HTTPServer speaks HTTP/1.1 only: each request's connection is an HTTP1Connection.
        return ProxiedRequest(self, server_conn, cast(HTTP1Connection, request_conn))

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)

    def route(self, path: str) -> Route | None:
        for route in self.routes:
            if route.path.fullmatch(path):
                return route
        return None

    def date(self) -> str:
        """The `Date` header, formatted once a second rather than per request."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, httputil.format_timestamp(now))
        return self._date[1]


class ProxiedRequest(httputil.HTTPMessageDelegate):
    """One request on a connection: read it, forward it if its path is a route, else hand it to the app."""

    def __init__(self, server: ProxyServer, server_conn: object, connection: HTTP1Connection) -> None:
        self.server, self.server_conn, self.connection = server, server_conn, connection
        # The Application's delegate, for a path that is not a route.
        self.app_request: httputil.HTTPMessageDelegate | None = None
        self.chunks: list[bytes] = []
        self.size = 0

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        self.start_line = cast(httputil.RequestStartLine, start_line)  # a server reads requests
        self.headers = headers
        self.path = self.start_line.path.partition("?")[0]
        route = self.server.route(self.path)
        if route is None:
            self.app_request = self.server.app.start_request(self.server_conn, self.connection)
            return self.app_request.headers_received(start_line, headers)
        self.route = route
        self.started = time.perf_counter()
        # Read now: behind a trusted proxy Tornado puts the forwarded address here only while the request is read.
        self.remote_ip = remote_ip(self.connection)
        # The gateway is where a request enters: it names it for every log line and the ledger. A client's own
        # id is kept beside, never taken for the gateway's.
        self.request_id = new_request_id()
        self.client_request_id = label(headers.get(REQUEST_ID_HEADER))
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.app_request is not None:
            return self.app_request.data_received(chunk)
        self.size += len(chunk)
        if self.size <= self.server.max_body_bytes:
            self.chunks.append(chunk)  # past the limit only the size counts: the answer is a 413
        return None

    def finish(self) -> None:
        if self.app_request is not None:
            return self.app_request.finish()
        request_id.set(self.request_id)
        # Tornado's server loop, which holds this delegate, waits for the `connection.finish()` in `respond`.
        self.wait = requested_wait(self.start_line.method, self.start_line.path, self.headers.get(PREFER))
        self.responding = asyncio.ensure_future(self.respond())
        if self.wait:
            # A request the backend may hold for its wait: when the client leaves, the backend request is
            # cancelled (its connection closed), and the backend stops holding it. Other requests are answered in
            # milliseconds: their connections are kept rather than closed for nothing.
            self.connection.set_close_callback(self.client_left)
        return None

    def client_left(self) -> None:
        self.responding.cancel()

    def on_connection_close(self) -> None:
        if self.app_request is not None:
            return self.app_request.on_connection_close()
        return None

    async def respond(self) -> None:
        method = self.start_line.method
        try:
            self.check(method)
            headers = {k: v for k in self.route.forwarded_headers if (v := self.headers.get(k)) is not None}
            headers[REQUEST_ID_HEADER] = self.request_id
            if self.client_request_id:
                headers[CLIENT_REQUEST_ID_HEADER] = self.client_request_id
            body = b"".join(self.chunks) if method in ("POST", "PUT") else None
            response = await self.route.forward(method, self.start_line.path, headers, body, self.wait)
        except asyncio.CancelledError:
            self.log(CLIENT_CLOSED_REQUEST)  # the client left while waiting: nobody to answer
            raise
        except ShopError as exc:
            self.fail(exc)
        except Exception:  # a bug still gets the envelope (logged), and the connection is not left hanging
            logger.exception("%s %s failed", method, self.path)
            self.reply(500, to_json(envelope(False, "Internal server error.")).encode(),
                       {"Content-Type": JSON_CONTENT_TYPE})
        else:
            self.reply(response.code, response.body, {name: value for name in self.route.passed_back_headers
                                                      if (value := response.headers.get(name))})

    def fail(self, exc: ShopError) -> None:
        if exc.status_code >= 500:
            logger.warning("%s %s: %s", self.start_line.method, self.path, exc.message)
        headers = {"Content-Type": JSON_CONTENT_TYPE}
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(self.route.methods)  # RFC 9110: a 405 lists the methods that would work
        self.reply(exc.status_code, to_json(envelope(False, exc.message)).encode(), headers)

    def check(self, method: str) -> None:
        """The checks `BaseHandler.prepare` and Tornado make before a handler runs, in the same order."""
        if method in RequestHandler.SUPPORTED_METHODS:
            check_body(method, self.size, self.headers.get("Content-Type"), self.server.max_body_bytes)
        if method not in self.route.methods:
            raise MethodNotAllowed(f"Method {method} not allowed on {self.path}.")

    def reply(self, code: int, body: bytes, fields: Mapping[str, str]) -> None:
        """Answer `code` with `body` and header `fields`, as a `RequestHandler` would: with `Server`, `Date`, the
        request id and the body's length, a HEAD without the body, a 304 without any."""
        headers = httputil.HTTPHeaders({"Server": SERVER, "Date": self.server.date(),
                                        REQUEST_ID_HEADER: self.request_id, **fields})
        if self.client_request_id:
            headers[CLIENT_REQUEST_ID_HEADER] = self.client_request_id
        if code == 304:
            # RFC 9110 15.4.5: no content, and no Content-Type a cache would take over for the 200 it stored
            headers.pop("Content-Type", None)
            body = b""
        else:
            headers.setdefault("Content-Type", "text/html; charset=UTF-8")
            headers["Content-Length"] = str(len(body))
        if self.start_line.method == "HEAD":
            body = b""  # the GET's headers, its Content-Length too (RFC 9110 9.3.2)
        start_line = httputil.ResponseStartLine("", code, responses.get(code, "Unknown"))
        # The connection counts as busy (`common.web.http_server.DrainingHTTPServer`) until this is written.
        try:
            self.connection.write_headers(start_line, headers, body)
            self.connection.finish()
        except StreamClosedError:
            pass  # the client left: the answer has nobody to go to
        self.log(code)

    def log(self, code: int) -> None:
        seconds = time.perf_counter() - self.started
        REQUESTS.labels(HANDLER_LABEL, method_label(self.start_line.method), code).observe(seconds)
        level = logging.INFO if code < 400 else logging.WARNING if code < 500 else logging.ERROR
        if access_log.isEnabledFor(level):
            access_log.log(level, "%d %s %s (%s) %.2fms", code, self.start_line.method, self.start_line.path,
                           self.remote_ip, 1000 * seconds)
