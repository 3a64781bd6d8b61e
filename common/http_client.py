"""`KeepAliveClient`: HTTP/1.1 requests over pooled keep-alive connections, on Tornado's own `HTTP1Connection`.

The gateway forwards every request, so the client is most of its cost. Tornado's simple client opens a TCP
connection per request; its curl client keeps connections alive but sets up a libcurl handle per request (some
forty options, a Python callback per header line) and drives it through timers and socket callbacks. This
client writes the request and parses the response with the same code the Tornado server uses, on a pooled
`IOStream` (README, Performance: the gateway's CPU per order before and after). The pool is bounded
(`common.connection_pool`): requests beyond it wait for a connection instead of opening more."""
import asyncio
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import urlsplit

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.iostream import StreamClosedError
from tornado.tcpclient import TCPClient

from common.connection_pool import ConnectionPool

# Methods that may be sent again when a kept-alive connection turns out dead before answering: the backend may
# have run the request before dying, and a second POST would create a second order, a second PUT credit twice.
SAFE_TO_RESEND = frozenset(("GET", "HEAD", "OPTIONS"))


class ConnectionLost(Exception):
    """The connection closed before the whole response arrived: the backend may or may not have acted on it."""


# Everything `KeepAliveClient.fetch` raises when it gets no response.
FETCH_ERRORS = (OSError, ConnectionLost, asyncio.TimeoutError)


@dataclass
class Response:
    code: int
    headers: httputil.HTTPHeaders
    body: bytes


class _ResponseReader(httputil.HTTPMessageDelegate):
    def __init__(self):
        self.start_line, self.headers, self.chunks = None, None, []

    def headers_received(self, start_line, headers):
        self.start_line, self.headers = start_line, headers

    def data_received(self, chunk):
        self.chunks.append(chunk)


class KeepAliveClient:
    """Requests to a few backends over a `ConnectionPool` of at most `pool_size` connections per address."""

    def __init__(self, pool_size=64, max_body_size=10 * 1024 * 1024):
        self._pools = defaultdict(lambda: ConnectionPool(pool_size))
        self._tcp = TCPClient()
        self._params = HTTP1ConnectionParameters(decompress=False, max_body_size=max_body_size)

    async def fetch(self, url, method="GET", headers=None, body=None, timeout=10.0, connect_timeout=2.0):
        """Send one request and return its `Response`; `timeout` bounds it all, the wait for a free
        connection included.

        Raises `ConnectionRefusedError` (or another `OSError`) if no connection could be made: the request
        surely never reached the backend. Raises `ConnectionLost` if the connection broke before the response
        was complete, and `asyncio.TimeoutError` after `timeout` seconds: the request may have had its effect."""
        parts = urlsplit(url)
        address = (parts.hostname, parts.port or 80)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        request_headers = httputil.HTTPHeaders(headers or {})
        request_headers["Host"] = parts.netloc
        if body is not None:
            request_headers["Content-Length"] = str(len(body))
        pool = self._pools[address]
        async with asyncio.timeout(timeout):
            stream = await pool.acquire()
            try:
                response, stream = await self._send(address, stream, connect_timeout, method, target,
                                                    request_headers, body)
            except BaseException:
                pool.release()  # `_exchange` closed the stream
                raise
            pool.release(stream)
            return response

    async def _send(self, address, stream, connect_timeout, method, target, headers, body):
        """(response, the stream if it may carry the next request) over `stream`, or a new connection."""
        if stream is not None:
            try:
                return await self._exchange(stream, method, target, headers, body)
            except ConnectionLost:
                if method not in SAFE_TO_RESEND:
                    raise
        return await self._exchange(await self._connect(address, connect_timeout), method, target, headers, body)

    async def _connect(self, address, timeout):
        try:
            return await self._tcp.connect(*address, timeout=timeout)
        except StreamClosedError as exc:
            raise exc.real_error or ConnectionError(f"could not connect to {address[0]}:{address[1]}") from None

    async def _exchange(self, stream, method, target, headers, body):
        connection = HTTP1Connection(stream, True, self._params)
        reader = _ResponseReader()
        try:
            # Headers and body in one write: as two, Nagle's algorithm could hold the body back for a delayed ACK.
            connection.write_headers(httputil.RequestStartLine(method, target, "HTTP/1.1"), headers, body)
            connection.finish()
            open_after = await connection.read_response(reader)
        except StreamClosedError:
            stream.close()
            raise ConnectionLost(f"{method} {target}: connection closed") from None
        except BaseException:
            stream.close()  # a timeout or error mid-response leaves the stream unusable
            raise
        if reader.start_line is None:
            stream.close()
            raise ConnectionLost(f"{method} {target}: connection closed before the response")
        keep = open_after and reader.headers.get("Connection", "").lower() != "close" \
            and reader.start_line.version == "HTTP/1.1"
        if not keep:
            stream.close()
        return Response(reader.start_line.code, reader.headers, b"".join(reader.chunks)), stream if keep else None

    def close(self):
        for pool in self._pools.values():
            pool.close()
