"""`ResponseParser`: one HTTP/1.1 response read from bytes that arrive in any pieces (RFC 9112).

No I/O here: `proxy.http_client` feeds it what the socket gave, so the same bytes parse the same way however
the reads split them, and the tests can split them at every byte. The framing is taken strictly, as a proxy must
(a lenient reading is how responses get smuggled): a Content-Length of digits only (repeats must agree), chunk
sizes of hex digits only, each chunk closed by CRLF, `Transfer-Encoding` only `chunked` and never beside a
Content-Length. Anything else raises `MalformedResponse`, and the connection is not used again."""
import re
from collections.abc import Callable
from dataclasses import dataclass

from tornado import httputil

MAX_HEADER_BYTES = 65536  # as Tornado's own HTTP1Connection
MAX_CHUNK_LINE = 64  # a chunk's size line: its hex size and any extensions
DIGITS = re.compile(rb"[0-9]+")
HEX_DIGITS = re.compile(rb"[0-9a-fA-F]+")
HEAD_END = re.compile(rb"\r?\n\r?\n")


class MalformedResponse(ValueError):
    """The bytes are not an HTTP/1.1 response the gateway can pass on."""


@dataclass
class Response:
    code: int
    headers: httputil.HTTPHeaders
    body: bytes


def parse_length(value: str) -> int:
    """A Content-Length's value (RFC 9110 8.6): digits only; a list of the same value twice (a header sent twice
    is joined by commas) is that value."""
    values = {piece.strip() for piece in value.split(",")}
    if len(values) != 1:
        raise MalformedResponse(f"Content-Length values differ: {value!r}")
    digits = values.pop().encode("latin1")
    if not DIGITS.fullmatch(digits):
        raise MalformedResponse(f"Content-Length is not a number: {value!r}")
    return int(digits)


def parse_chunk_size(line: bytes) -> int:
    """The size of the chunk whose size line (without its CRLF) is `line`; extensions after `;` are ignored."""
    size = line.split(b";", 1)[0].rstrip(b" \t")
    if not HEX_DIGITS.fullmatch(size):
        raise MalformedResponse(f"chunk size is not hexadecimal: {line[:MAX_CHUNK_LINE]!r}")
    return int(size, 16)


class ResponseParser:
    """Feed it bytes with `feed` (and `feed_eof` when the connection ends) until `response` is set.

    `no_body`: the request was a HEAD, whose response has the headers of a body but none. `max_body_size` bounds
    the body. Once complete, `reusable` says whether the connection may carry another request: HTTP/1.1, no
    `Connection: close`, the body not ended by the connection's close, and no byte beyond the response."""

    def __init__(self, max_body_size: int, no_body: bool = False) -> None:
        self.max_body_size, self.no_body = max_body_size, no_body
        self.buffer = b""
        self.response: Response | None = None
        self.reusable = False
        # What the next bytes are: each step takes from `buffer`, and says False when it needs more.
        self.step: Callable[[], bool] = self._head
        self.code, self.headers, self.version = 0, httputil.HTTPHeaders(), ""  # the head's, once read
        self.chunks: list[bytes] = []
        self.size, self.remaining = 0, 0

    def feed(self, data: bytes) -> Response | None:
        """Take `data`, the next bytes of the connection; returns the `Response` once it is complete, else None."""
        if self.response is not None:
            if data:
                self.reusable = False  # bytes nobody asked for: the connection's state is unknown
            return self.response
        self.buffer += data
        while self.response is None and self.step():
            pass
        return self.response

    @property
    def ends_at_close(self) -> bool:
        """Whether the body is the rest of the connection (no length given): its close completes the response."""
        return self.step == self._until_close

    def feed_eof(self) -> Response:
        """The connection ended: the `Response` if its body was the rest of the connection, else
        `MalformedResponse` (it ended early)."""
        if self.response is None and self.ends_at_close:
            self._finish(self.buffer, reusable=False)
        if self.response is None:
            raise MalformedResponse("the connection closed before the whole response")
        return self.response

    def _head(self) -> bool:
        head = self.buffer.lstrip(b"\r\n")  # empty lines before a response are ignored (RFC 9112 2.2)
        end = HEAD_END.search(head)
        if end is None:
            if len(self.buffer) > MAX_HEADER_BYTES:
                raise MalformedResponse(f"response head over {MAX_HEADER_BYTES} bytes")
            return False
        if end.end() > MAX_HEADER_BYTES:
            raise MalformedResponse(f"response head over {MAX_HEADER_BYTES} bytes")
        self.buffer = head[end.end():]
        text = head[:end.start()].decode("latin1")
        status_line, _, fields = text.partition("\n")
        try:
            start_line = httputil.parse_response_start_line(status_line.rstrip("\r"))
            self.headers = httputil.HTTPHeaders.parse(fields)
        except httputil.HTTPInputError as exc:
            raise MalformedResponse(str(exc)) from None
        self.code, self.version = start_line.code, start_line.version
        self.step = self._framing()
        return True

    def _framing(self) -> Callable[[], bool]:
        """The step that reads the body, as the head says it is framed (RFC 9112 6.3)."""
        transfer_encoding = self.headers.get("Transfer-Encoding")
        if transfer_encoding is not None and "Content-Length" in self.headers:
            raise MalformedResponse("both Transfer-Encoding and Content-Length")
        length = parse_length(self.headers["Content-Length"]) if "Content-Length" in self.headers else None
        if self.no_body or self.code in (204, 304) or 100 <= self.code < 200:
            return self._empty
        if transfer_encoding is not None:
            if transfer_encoding.strip().lower() != "chunked":
                raise MalformedResponse(f"unsupported Transfer-Encoding: {transfer_encoding!r}")
            return self._chunk_size
        if length is None:
            return self._until_close
        if length > self.max_body_size:
            raise MalformedResponse(f"body of {length} bytes is over the limit of {self.max_body_size}")
        self.remaining = length
        return self._sized

    def _empty(self) -> bool:
        self._finish(b"")
        return True

    def _sized(self) -> bool:
        if len(self.buffer) < self.remaining:
            return False
        self._finish(self.buffer[:self.remaining])
        return True

    def _until_close(self) -> bool:
        if len(self.buffer) > self.max_body_size:
            raise MalformedResponse(f"body over the limit of {self.max_body_size} bytes")
        return False  # only `feed_eof` ends it

    def _chunk_size(self) -> bool:
        end = self.buffer.find(b"\r\n")
        if end < 0:
            if len(self.buffer) > MAX_CHUNK_LINE:
                raise MalformedResponse("chunk size line too long")
            return False
        if end > MAX_CHUNK_LINE:
            raise MalformedResponse("chunk size line too long")
        self.remaining = parse_chunk_size(self.buffer[:end])
        self.buffer = self.buffer[end + 2:]
        self.size += self.remaining
        if self.size > self.max_body_size:
            raise MalformedResponse(f"chunked body over the limit of {self.max_body_size} bytes")
        self.step = self._chunk_data if self.remaining else self._trailer
        return True

    def _chunk_data(self) -> bool:
        if len(self.buffer) < self.remaining + 2:
            return False
        if self.buffer[self.remaining:self.remaining + 2] != b"\r\n":
            raise MalformedResponse("a chunk is not followed by CRLF")
        self.chunks.append(self.buffer[:self.remaining])
        self.buffer = self.buffer[self.remaining + 2:]
        self.step = self._chunk_size
        return True

    def _trailer(self) -> bool:
        """Trailer fields up to an empty line: read and dropped, nothing the gateway passes on."""
        end = self.buffer.find(b"\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                raise MalformedResponse(f"trailer over {MAX_HEADER_BYTES} bytes")
            return False
        line, self.buffer = self.buffer[:end], self.buffer[end + 2:]
        if not line:
            self.remaining = 0
            self._finish(b"".join(self.chunks), consumed=0)
        return True

    def _finish(self, body: bytes, reusable: bool = True, consumed: int | None = None) -> None:
        """The response is `body` with the head read; `consumed` bytes of `buffer` were its body (default all
        of `body`), and whatever follows them is a byte nobody asked for."""
        leftover = self.buffer[len(body) if consumed is None else consumed:]
        self.buffer = b""
        self.reusable = reusable and not leftover and self.version == "HTTP/1.1" \
            and self.headers.get("Connection", "").lower() != "close"
        self.response = Response(self.code, self.headers, body)
