"""`KeepAliveClient`: HTTP/1.1 requests over pooled keep-alive connections, on Tornado's own `HTTP1Connection`.

The gateway forwards every request, so the client is most of its cost. Tornado's simple client opens a TCP
connection per request; its curl client keeps connections alive but sets up a libcurl handle per request (some
forty options, a Python callback per header line) and drives it through timers and socket callbacks. This
client writes the request and parses the response with the same code the Tornado server uses, on a pooled
`IOStream` (README, Performance: the gateway's CPU per order before and after)."""
import asyncio
import socket
from collections import defaultdict
from dataclasses import dataclass
from urllib.parse import urlsplit

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.iostream import StreamClosedError
from tornado.tcpclient import TCPClient

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


def peer_closed(stream):
    """True if an idle kept-alive connection can no longer be used: the backend closed it (graceful shutdown,
    restart, crash) or sent something unasked. One non-blocking peek, no waiting."""
    if stream.closed():
        return True
    try:
        stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False  # nothing to read: open and idle
    except OSError:
        return True
    return True  # end of stream, or bytes nobody asked for


class KeepAliveClient:
    """Requests to a few backends; each keeps up to `max_idle` idle connections for the next request."""

    def __init__(self, max_idle=64, max_body_size=10 * 1024 * 1024):
        self._idle = defaultdict(list)
        self._max_idle = max_idle
        self._tcp = TCPClient()
        self._params = HTTP1ConnectionParameters(decompress=False, max_body_size=max_body_size)

    async def fetch(self, url, method="GET", headers=None, body=None, timeout=10.0, connect_timeout=2.0):
        """Send one request and return its `Response`.

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
        async with asyncio.timeout(timeout):
            while stream := self._take_idle(address):
                try:
                    return await self._exchange(address, stream, method, target, request_headers, body)
                except ConnectionLost:
                    if method not in SAFE_TO_RESEND:
                        raise
            try:
                stream = await self._tcp.connect(*address, timeout=connect_timeout)
            except StreamClosedError as exc:
                raise exc.real_error or ConnectionError(f"could not connect to {parts.netloc}") from None
            return await self._exchange(address, stream, method, target, request_headers, body)

    def _take_idle(self, address):
        idle = self._idle[address]
        while idle:
            stream = idle.pop()
            if not peer_closed(stream):
                return stream
            stream.close()
        return None

    async def _exchange(self, address, stream, method, target, headers, body):
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
        if keep and len(self._idle[address]) < self._max_idle:
            self._idle[address].append(stream)
        else:
            stream.close()
        return Response(reader.start_line.code, reader.headers, b"".join(reader.chunks))

    def close(self):
        for idle in self._idle.values():
            for stream in idle:
                stream.close()
        self._idle.clear()
