"""A stand-in for a service, on raw sockets, that the gateway forwards to: it records every request it reads
and, as the test decides per request, answers it, closes the connection without an answer, or never answers."""
import json
import socket
import threading
from dataclasses import dataclass

from harness.stack import free_port

ANSWER, DROP, HOLD = "answer", "drop", "hold"
ETAG = '"raw-backend-1"'  # the Etag of every answer: an If-None-Match naming it gets a 304


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    connection: int  # which connection (1, 2, ...) it came on
    nth: int         # its place on that connection (2 or more: a kept-alive connection reused)
    headers: tuple = ()  # ((lower-case name, value), ...)
    body: bytes = b""


class RawBackend:
    """`policy(method, nth)` returns ANSWER (200 with a JSON body and `ETAG`, or a 304 if the request's
    If-None-Match names it; the connection kept alive), a status code (that answer with this code instead of
    200), DROP (close the connection without a byte of answer) or HOLD (never answer). `etag=None`: answers
    without an Etag, never a 304."""

    def __init__(self, policy=lambda method, nth: ANSWER, etag=ETAG):
        self.policy, self.etag = policy, etag
        self.port = free_port()
        self.seen = []
        self._lock = threading.Lock()
        self._connections = 0
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def requests(self, method=None):
        with self._lock:
            return [s for s in self.seen if method is None or s.method == method]

    def close(self):
        self._listener.close()

    def _accept(self):
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections += 1
                number = self._connections
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock, number):
        reader = sock.makefile("rb")
        with sock, reader:
            for nth in range(1, 1000):
                request = read_request(reader)
                if request is None:
                    return
                method, path, headers, body = request
                with self._lock:
                    self.seen.append(Seen(method, path, number, nth, headers, body))
                action = self.policy(method, nth)
                if action == DROP:
                    return
                if action == HOLD:
                    threading.Event().wait(60)
                    return
                etag = f"Etag: {self.etag}\r\n".encode() if self.etag else b""
                if self.etag and dict(headers).get("if-none-match") == self.etag:
                    sock.sendall(b"HTTP/1.1 304 Not Modified\r\n%s\r\n" % etag)
                    continue
                code = 200 if action == ANSWER else action
                body = json.dumps({"status": "Success", "message": f"{method} {path} seen."}).encode()
                sock.sendall(b"HTTP/1.1 %d Raw\r\nContent-Type: application/json; charset=raw\r\n%s"
                             b"Content-Length: %d\r\n\r\n%s" % (code, etag, len(body), body))


def read_request(reader):
    """(method, path, headers, body) of the next request on the connection; None at its end."""
    line = reader.readline()
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers = []
    while (header := reader.readline()) not in (b"\r\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    length = int(dict(headers).get("content-length", 0))
    return method, path, tuple(headers), reader.read(length)
