"""`ConnectionPool`: at most `size` connections to one backend address, shared by the requests to it.

Without a bound, a burst of 1,000 client requests opened 1,000 backend connections at once: the backend's
accept queue (128 by default) overflowed, connects timed out and the gateway answered 503 while the backend was
up. With it, a request beyond `size` waits in line for a connection to come free, and overload costs
latency, not errors. The caller bounds that wait with its own timeout."""
import asyncio
import socket
from collections import deque

from tornado.iostream import IOStream


def peer_closed(stream: IOStream) -> bool:
    """True if an idle kept-alive connection can no longer be used: the backend closed it (graceful shutdown,
    restart, crash, its idle timeout) or sent something unasked. One non-blocking peek, no waiting."""
    if stream.closed():
        return True
    try:
        stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False  # nothing to read: open and idle
    except OSError:
        return True
    return True  # end of stream, or bytes nobody asked for


class ConnectionPool:
    """Slots for `size` connections. `acquire` grants one, with an idle stream or `None` (open a new
    connection in it); `release` gives the slot back, with the stream if it may be used again."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"pool size must be at least 1, not {size}")
        self.size = size
        self.granted = 0  # slots held by requests or by idle streams
        self.idle: list[IOStream] = []
        self.waiting: deque[asyncio.Future[IOStream | None]] = deque()  # requests in line for a slot, oldest first

    async def acquire(self) -> IOStream | None:
        """An idle stream, or `None` to open a new connection; waits (first come, first served) when every
        slot is taken. Cancelling the wait (a timeout) gives up the place in line, or the slot if one came."""
        while self.idle:
            stream = self.idle.pop()  # the most recently used: least likely to have been closed by the backend
            if not peer_closed(stream):
                return stream
            stream.close()
            self.granted -= 1
        if self.granted < self.size and not self.waiting:
            self.granted += 1
            return None
        turn: asyncio.Future[IOStream | None] = asyncio.get_running_loop().create_future()
        self.waiting.append(turn)
        try:
            return await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release(turn.result())  # handed a slot just as the wait was given up: pass it on
            elif turn in self.waiting:
                self.waiting.remove(turn)  # else a later request would queue behind a wait nobody holds
            raise

    def release(self, stream: IOStream | None = None) -> None:
        """Give a slot back: with `stream` (open, idle, reusable) or without (its connection closed or never
        made). The first request in line gets it as it is."""
        while self.waiting:
            turn = self.waiting.popleft()
            if not turn.done():
                turn.set_result(self._checked(stream))
                return
        if stream is not None and not stream.closed():
            self.idle.append(stream)
        else:
            self.granted -= 1

    @staticmethod
    def _checked(stream: IOStream | None) -> IOStream | None:
        return None if stream is None or stream.closed() else stream

    def close(self) -> None:
        for stream in self.idle:
            stream.close()
        self.granted -= len(self.idle)
        self.idle.clear()
