"""`KeepAliveClient`: HTTP/1.1 requests over pooled keep-alive connections, on Tornado's `IOStream`.

The gateway forwards every request, so the client is most of its cost. Tornado's simple client opens a TCP
connection per request; its curl client keeps connections alive but sets up a libcurl handle per request (some
forty options, a Python callback per header line) and drives it through timers and socket callbacks. This
client writes the request as one buffer and parses the response (`proxy.response`) from whatever each read of a
pooled `IOStream` gives: usually the whole response in one read (docs/performance.md: the gateway against nginx
and against Tornado's simple client, `python -m bench.gateway_cpu`). The pool is bounded
(`proxy.connection_pool`): requests beyond it wait for a connection instead of opening more."""
import asyncio
from collections import defaultdict
from collections.abc import Mapping
from urllib.parse import urlsplit

from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

from proxy.connection_pool import ConnectionPool
from proxy.response import MalformedResponse, Response, ResponseParser

READ_SIZE = 65536  # at most this much per read: the stream gives what has arrived, up to it

# Methods that may be sent again when a kept-alive connection turns out dead before answering: the backend may
# have run the request before dying, and a second POST would create a second order, a second PUT credit twice.
SAFE_TO_RESEND = frozenset(("GET", "HEAD", "OPTIONS"))


class ConnectionLost(Exception):
    """The connection closed before the whole response arrived, or what arrived was not an HTTP/1.1 response:
    the backend may or may not have acted on the request."""


# Everything `KeepAliveClient.fetch` raises when it gets no response.
FETCH_ERRORS = (OSError, ConnectionLost, asyncio.TimeoutError)


def _format_request(method: str, target: str, headers: Mapping[str, str], body_length: int | None) -> bytes:
    """The request line and header block, as bytes; `body_length` None for a request without a body."""
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items())]
    if body_length is not None:
        lines.append(f"Content-Length: {body_length}")
    text = "\r\n".join(lines)
    if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
        raise ValueError(f"a CR or LF inside a request header: {headers!r}")  # it would smuggle a header in
    return (text + "\r\n\r\n").encode("latin1")


def _request_line(request: bytes) -> str:
    return request.split(b"\r\n", 1)[0].decode("latin1")


class KeepAliveClient:
    """Requests to a few backends over a `ConnectionPool` of at most `pool_size` connections per address."""

    def __init__(self, pool_size: int = 64, max_body_size: int = 10 * 1024 * 1024) -> None:
        self._pools: defaultdict[tuple[str, int], ConnectionPool] = defaultdict(lambda: ConnectionPool(pool_size))
        self._tcp = TCPClient()
        self._max_body_size = max_body_size

    async def fetch(self, url: str, method: str = "GET", headers: Mapping[str, str] | None = None,
                    body: bytes | None = None, timeout: float = 10.0, connect_timeout: float = 2.0) -> Response:
        """Send one request and return its `Response`; `timeout` bounds it all, the wait for a free
        connection included.

        Raises `ConnectionRefusedError` (or another `OSError`) if no connection could be made: the request
        surely never reached the backend. Raises `ConnectionLost` if the connection broke before the response
        was complete, and `asyncio.TimeoutError` after `timeout` seconds: the request may have had its effect."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not an http:// URL with a host: {url!r}")
        address = (parts.hostname, parts.port or 80)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        request = _format_request(method, target, {"Host": parts.netloc, **(headers or {})},
                                  None if body is None else len(body))
        if body:
            request += body  # headers and body in one write: as two, Nagle could hold the body for a delayed ACK
        pool = self._pools[address]
        async with asyncio.timeout(timeout):
            pooled = await pool.acquire()
            try:
                try:
                    response, stream = await self._exchange(pooled or await self._connect(address, connect_timeout),
                                                            request, method)
                except ConnectionLost:
                    # A pooled connection the backend closed meanwhile: a request safe to resend tries a new one.
                    if pooled is None or method not in SAFE_TO_RESEND:
                        raise
                    response, stream = await self._exchange(await self._connect(address, connect_timeout), request,
                                                            method)
            except BaseException:
                pool.release()  # `_exchange` closed the stream
                raise
            pool.release(stream)
            return response

    async def _connect(self, address: tuple[str, int], timeout: float) -> IOStream:
        try:
            stream = await self._tcp.connect(*address, timeout=timeout)
        except StreamClosedError as exc:
            raise exc.real_error or ConnectionError(f"could not connect to {address[0]}:{address[1]}") from None
        stream.set_nodelay(True)  # each request is one write and waits for its answer: nothing to gather
        return stream

    async def _exchange(self, stream: IOStream, request: bytes, method: str) -> tuple[Response, IOStream | None]:
        """Write the request, read the response: (response, the stream if it may carry the next request)."""
        parser = ResponseParser(self._max_body_size, no_body=method == "HEAD")
        try:
            stream.write(request)
            response = None
            while response is None:
                try:
                    data = await stream.read_bytes(READ_SIZE, partial=True)
                except StreamClosedError:
                    if not parser.ends_at_close:
                        raise
                    response = parser.feed_eof()
                else:
                    response = parser.feed(data)
        except StreamClosedError:
            stream.close()
            raise ConnectionLost(f"{_request_line(request)}: connection closed before the whole response") from None
        except MalformedResponse as exc:
            stream.close()
            raise ConnectionLost(f"{_request_line(request)}: malformed response: {exc}") from None
        except BaseException:
            stream.close()  # a timeout or error mid-response leaves the stream unusable
            raise
        if not parser.reusable:
            stream.close()
        return response, stream if parser.reusable else None

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
