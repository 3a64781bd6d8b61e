"""The HTTP server of every process, with bounds a slow or hostile client cannot outstay.

Tornado's defaults keep a connection that sent half a request for an hour and accept connections until the
process runs out of file descriptors (3,000 such connections were all still open 5 s later). Here:
- `CLIENT_IDLE_TIMEOUT`: Tornado 6.6 has one timer for the headers (`HTTP1ConnectionParameters.header_timeout`,
  set by `idle_connection_timeout`): it runs from the connection's opening, or the end of the previous answer,
  to the end of the next request's headers. So it bounds both the idle keep-alive time and a request whose
  headers trickle in;
- `CLIENT_BODY_TIMEOUT`: the body, from the end of its headers (`body_timeout`);
- `MAX_CONNECTIONS`: open connections; one more gets a 503 envelope and is closed at once;
- `TRUSTED_PROXY`: only then are `X-Forwarded-For` / `X-Real-IP` taken as the client's address (`xheaders`).
A connection dropped by a timeout is closed without an answer, as Tornado does."""
import asyncio
import logging
import resource
import socket
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, cast

from tornado import httputil, netutil
from tornado.http1connection import HTTP1ServerConnection
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError

from common.domain.json_text import to_json
from common.runtime.config import Settings
from common.runtime.stopping import within
from common.web.envelope import envelope

logger = logging.getLogger(__name__)

# Files kept for everything but client connections: backend pools, database and broker connections, logs.
RESERVED_FILES = 256
# Tornado rejects bodies above this outright; handlers enforce the smaller MAX_BODY_BYTES with a JSON 413.
SERVER_MAX_BODY = 10 * 1024 * 1024

_BUSY_BODY = to_json(envelope(False, "Too many connections; try again later.")).encode()
BUSY_RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=UTF-8\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class BoundedHTTPServer(HTTPServer):
    """`HTTPServer` that serves at most `max_connections` connections at once.

    It keeps its own set of the streams it serves (`streams`), from `handle_stream` to `on_close`, Tornado's public
    hooks: Tornado's own set of connections is private, and could change or vanish in any release."""

    # Tornado's `Configurable` hands the constructor's arguments to `initialize`: one more of its own here.
    def initialize(self, request_callback: httputil.HTTPServerConnectionDelegate,  # type: ignore[override]
                   max_connections: int, **kwargs: Any) -> None:
        super().initialize(request_callback, **kwargs)
        self.max_connections = max_connections
        self.refused = 0
        self.streams: set[IOStream] = set()

    def handle_stream(self, stream: IOStream, address: tuple[str, int]) -> None:
        if len(self.streams) >= self.max_connections:
            self.refused += 1
            if self.refused % 1000 == 1:
                logger.warning("%d connections open, the most allowed (MAX_CONNECTIONS): refusing new ones "
                               "(%d so far)", len(self.streams), self.refused)
            refuse(stream)
            return
        super().handle_stream(stream, address)
        # Added once serving has started, so that a stream whose start failed holds no place under the cap; its
        # serving loop, which ends in `on_close`, runs from the next turn of the event loop on.
        self.streams.add(stream)

    def on_close(self, server_conn: object) -> None:
        self.streams.discard(stream_of(server_conn))
        super().on_close(server_conn)


def stream_of(server_conn: object) -> IOStream:
    """The stream of a connection as Tornado's `HTTPServer` hooks name it (typed there as any object)."""
    return cast(HTTP1ServerConnection, server_conn).stream


def refuse(stream: IOStream) -> None:
    """Answer a connection over the cap with the 503 envelope, then close it."""
    def close(written: asyncio.Future[None]) -> None:
        written.exception()  # a client already gone is no news
        stream.close()
    try:
        stream.write(BUSY_RESPONSE).add_done_callback(close)
    except StreamClosedError:
        pass


def connection_cap(wanted: int, other_files: int = 0) -> int:
    """`wanted`, or fewer if the process may not open that many files beside `RESERVED_FILES` and `other_files`
    (the gateway's connections for waiting requests): the soft limit is raised towards the hard one first
    (containers often start with a soft limit of 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + RESERVED_FILES + other_files
    if soft < needed and (hard == resource.RLIM_INFINITY or soft < hard):
        soft = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    cap = max(min(wanted, soft - RESERVED_FILES - other_files), 1)
    if cap < wanted:
        logger.warning("MAX_CONNECTIONS=%d lowered to %d: the process may open only %d files", wanted, cap, soft)
    return cap


def server_options(settings: Settings, other_files: int = 0) -> dict[str, Any]:
    """Keyword arguments of Tornado's `HTTPServer` (or `BoundedHTTPServer`) for the bounds in `settings`."""
    return dict(max_connections=connection_cap(settings.max_connections, other_files), max_body_size=SERVER_MAX_BODY,
                xheaders=settings.trusted_proxy, idle_connection_timeout=settings.client_idle_timeout,
                body_timeout=settings.client_body_timeout)


class DrainingHTTPServer(BoundedHTTPServer):
    """An `HTTPServer` that knows which connections have a request in flight, so that a graceful shutdown
    closes only idle ones (`stop_server`).

    A connection is busy from a request's headers until its answer is written: Tornado's connection loop asks
    for the next request (`start_request`) only once the previous answer is out."""
    port: int  # where it listens (`listen`)

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.busy: weakref.WeakSet[IOStream] = weakref.WeakSet()
        self.cut: weakref.WeakSet[IOStream] = weakref.WeakSet()  # closed by `close_idle`

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        stream = stream_of(server_conn)
        self.busy.discard(stream)
        return _MarkBusy(self, stream, super().start_request(server_conn, request_conn))

    def on_close(self, server_conn: object) -> None:
        self.busy.discard(stream_of(server_conn))
        super().on_close(server_conn)

    def idle(self) -> set[IOStream]:
        """The open streams with no request in flight and no bytes waiting in their socket."""
        return {stream for stream in self.streams if stream not in self.busy and not received(stream)}

    def close_idle(self, stream: IOStream) -> None:
        """Close `stream`, which was idle; a request whose headers were already read from it is dropped unserved."""
        self.cut.add(stream)
        stream.close()


class _MarkBusy(httputil.HTTPMessageDelegate):
    """`delegate`, with its connection marked busy once a request's headers arrive. The other calls go to
    `delegate`'s own methods directly: a body passes through no frame of this wrapper.

    Headers that reach it on a stream `close_idle` has cut are not handed on: Tornado may have read them (and the
    body with them) just before the cut, and still serves a request whose bytes it buffered. Served, it would
    commit what no answer can tell; dropped, its client sees a connection closed before any answer, as when a
    request comes a moment too late."""
    # `delegate`'s own bound methods, set per instance. (mypy compares the first with the base's method as if it
    # lacked `self`; it is called the same way.)
    data_received: Callable[[bytes], Awaitable[None] | None]  # type: ignore[assignment]
    finish: Callable[[], None]
    on_connection_close: Callable[[], None]

    def __init__(self, server: DrainingHTTPServer, stream: IOStream, delegate: httputil.HTTPMessageDelegate) -> None:
        self.server, self.stream, self.delegate = server, stream, delegate
        self.data_received = delegate.data_received
        self.finish = delegate.finish
        self.on_connection_close = delegate.on_connection_close

    def headers_received(self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Awaitable[None] | None:
        if self.stream in self.server.cut:
            logger.debug("a request read just before its idle connection was closed is dropped: %s", start_line)
            self.data_received = self.finish = self.on_connection_close = _ignore
            return None
        self.server.busy.add(self.stream)
        return self.delegate.headers_received(start_line, headers)


def _ignore(*args: object) -> None:
    return None


def listen(app: httputil.HTTPServerConnectionDelegate, port: int, address: str, settings: Settings,
           other_files: int = 0) -> DrainingHTTPServer:
    """An HTTP server for `app` (an `Application` or any `HTTPServerConnectionDelegate`) on `address`:`port`
    (port 0: one the kernel picks; `server.port` says which), with the client limits of `settings`
    (see above; `other_files`: the process's files beside its clients and the usual reserve)."""
    # An accept queue as long as the connections the process may serve (the kernel caps it at somaxconn). Tornado's
    # 128 overflows in a burst of new connections, e.g. 1,000 clients starting to wait at once, each also taking a
    # gateway connection to the Order Service of its own: dropped SYNs are sent again a second later, and all
    # were waiting after 1.8-2.4 s instead of 1.3-1.5 s (3 bursts each, bench.blocking_reads' client).
    sockets = netutil.bind_sockets(port, address, backlog=settings.max_connections)
    server = DrainingHTTPServer(app, **server_options(settings, other_files))
    server.add_sockets(sockets)
    server.port = sockets[0].getsockname()[1]
    return server


def received(stream: IOStream) -> bool:
    """Whether bytes of a next request wait in `stream`'s socket (bytes Tornado already took into its own buffer
    are not seen: how many there are is private to it)."""
    if stream.closed():
        return False
    try:
        return bool(stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError: nothing there
        return False


async def stop_server(server: DrainingHTTPServer, grace: float = 8.0) -> None:
    """Stop accepting; close each connection once it is idle, for up to `grace` seconds; then close the rest.

    Tornado's `close_all_connections` alone would cut requests off mid-way: an order committed whose answer
    never leaves, so the client cannot know it exists. A connection is closed only between requests."""
    server.stop()
    # A request read from now on is answered with `Connection: close`, and the connection then closes itself.
    server.conn_params.no_keep_alive = True
    deadline = asyncio.get_running_loop().time() + grace
    quiet: set[IOStream] = set()
    while server.streams and asyncio.get_running_loop().time() < deadline:
        # Closed only if idle with nothing received at two scans in a row: a request whose bytes have arrived
        # is on its way to being served, and is better answered than cut (a cut one is dropped unserved, and its
        # client must try again).
        idle = server.idle()
        for stream in idle & quiet:
            server.close_idle(stream)
        quiet = idle
        await asyncio.sleep(0.01)
    if server.streams:
        logger.warning("%d connections still busy after %ss; closing them", len(server.streams), grace)
    await within(3, "closing the HTTP connections", server.close_all_connections())
