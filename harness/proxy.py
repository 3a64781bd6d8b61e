"""A TCP proxy that a test can cut and restore: simulates a PostgreSQL or RabbitMQ outage for one
service without touching the real server (which other test runs share)."""
import socket
import threading
import time

from harness.stack import free_port


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target`. `down()` refuses new connections and resets open ones.

    `cut_after(sent)`, if given, sees everything a client has sent on its connection so far (bytes) after each
    chunk is forwarded; when it returns True the proxy resets that connection, so the server got the chunk
    but the client never gets the answer (e.g. a COMMIT applied whose reply is lost)."""

    def __init__(self, target_port, target_host="127.0.0.1", cut_after=None):
        self.target = (target_host, target_port)
        self.cut_after = cut_after
        self.port = free_port()
        self._listener = None
        self._sockets = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self.delay = 0.0  # seconds each chunk waits before it is forwarded (`slow`)

    def pause(self):
        """Fall silent, as a partition does: connections stay open and new ones are accepted, but nothing passes
        either way (no reset, no answer) until `resume`."""
        self._flowing.clear()

    def resume(self):
        self._flowing.set()

    def slow(self, seconds):
        """Forward each chunk, either way, `seconds` after it came (0: at once again): a slow link, the latency no
        netem adds on this kernel. Chunks of one direction wait in turn, so it also caps the link's throughput."""
        self.delay = seconds

    def up(self):
        listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self):
        listener, self._listener = self._listener, None
        if listener:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
        _shut_and_close(sockets)
        self._flowing.set()  # a paused pipe wakes to find its sockets closed

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._sockets |= {client, server}
            muted = threading.Event()  # set when the connection is being cut: answers are dropped
            threading.Thread(target=self._pipe, args=(client, server, muted, self.cut_after), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, muted), daemon=True).start()

    def _pipe(self, source, sink, muted, cut_after=None):
        sent = b""
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                if self.delay:
                    time.sleep(self.delay)
                sent = sent + data if cut_after else sent
                cut = cut_after is not None and cut_after(sent)
                if cut:
                    muted.set()
                if muted.is_set() and not cut:
                    break
                sink.sendall(data)
                if cut:
                    time.sleep(0.2)  # let the server act on what it got; its answer is dropped
                    for sock in (source, sink):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    break
        except OSError:
            pass
        finally:
            _shut_and_close((source, sink))


def _shut_and_close(sockets):
    """Shut every socket down before closing any. A socket another pipe thread is blocked in recv() on must be
    shut down: close() alone neither wakes that thread nor sends the FIN (or, with SO_LINGER 0, the RST), so
    its client would see the connection alive until a heartbeat times out."""
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    for sock in sockets:
        sock.close()
