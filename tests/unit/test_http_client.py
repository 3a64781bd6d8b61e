"""The gateway's keep-alive client against a raw HTTP server whose answers each test writes by hand: framing
(Content-Length, chunked, until close), connection reuse, and the resend rule (a GET is sent again on a new
connection when a kept-alive one breaks before the answer; a POST is not, it may have had its effect)."""
import asyncio

import pytest

from common.http_client import ConnectionLost, KeepAliveClient

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class RawServer:
    """Answers the n-th request (over all connections) with `answers[n]`; None closes the connection unanswered."""

    def __init__(self, answers):
        self.answers, self.requests, self.connections = list(answers), [], 0

    async def handle(self, reader, writer):
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer or b"Content-Length" not in answer and b"chunked" not in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()


def run(answers, *requests):
    """Send `requests` ((method, body) each) one after another; returns (results, server)."""
    async def main():
        client = KeepAliveClient(pool_size=1)
        results = []
        async with RawServer(answers) as server:
            for method, body in requests:
                try:
                    response = await client.fetch(server.url + "/orders/1", method, {"X-Test": "1"}, body, timeout=5)
                    results.append((response.code, response.body))
                except ConnectionLost as exc:
                    results.append(type(exc))
            client.close()
        return results, server
    return asyncio.run(main())


def test_a_connection_is_reused_and_every_framing_is_read():
    chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    results, server = run([OK, chunked, b"HTTP/1.1 404 Not Found\r\n\r\nto the end"],
                          ("GET", None), ("POST", b'{"a": 1}'), ("GET", None))
    assert results == [(200, b"{}"), (201, b"abcde"), (404, b"to the end")]
    assert server.connections == 1
    assert server.requests[1].startswith(b"POST /orders/1 HTTP/1.1\r\n")
    assert b"Content-Length: 8\r\n" in server.requests[1] and server.requests[1].endswith(b'{"a": 1}')


def test_a_get_is_sent_again_on_a_new_connection_when_the_kept_alive_one_breaks():
    results, server = run([OK, None, OK], ("GET", None), ("GET", None))
    assert results == [(200, b"{}"), (200, b"{}")]
    assert server.connections == 2 and len(server.requests) == 3


def test_a_post_on_a_kept_alive_connection_that_breaks_is_never_sent_again():
    results, server = run([OK, None, OK], ("GET", None), ("POST", b"{}"))
    assert results == [(200, b"{}"), ConnectionLost]
    assert len(server.requests) == 2


def test_a_header_with_a_line_break_is_refused_before_anything_is_sent():
    async def main():
        client = KeepAliveClient()
        with pytest.raises(ValueError):
            await client.fetch("http://127.0.0.1:1/x", "GET", {"X-Evil": "a\r\nX-Injected: 1"})
    asyncio.run(main())
