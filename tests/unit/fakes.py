"""Small fakes of the broker and the database for the unit layer: enough to drive batching and acking, the
publish window, both fast paths and both relays without a server. The integration tests use the real ones."""
import asyncio
from dataclasses import dataclass, field


class FakeDeadLetters:
    """The publishing channel dead letters go out on: confirms every copy, and keeps (queue, message id, reason)."""

    def __init__(self):
        self.copies = []
        self.default_exchange = self

    async def publish(self, message, routing_key, mandatory, timeout):
        self.copies.append((routing_key, message.message_id, message.headers["x-shop-reason"]))


@dataclass
class FakeMessage:
    """An incoming message: records how it was acknowledged."""
    delivery_tag: int
    body: bytes = b"{}"
    redelivered: bool = False
    message_id: str = "m"
    headers: dict = field(default_factory=dict)
    content_type: str = "application/json"
    content_encoding: str = None
    correlation_id: str = None
    timestamp: object = None
    type: str = None
    app_id: str = None
    outcome: list = field(default_factory=list)

    async def _record(self, what):
        self.outcome.append(what)

    def ack(self, multiple=False):
        return self._record(("ack", multiple))

    def nack(self, requeue=True):
        return self._record(("nack", requeue))

    def reject(self, requeue=False):
        return self._record(("reject", requeue))


class FakePublisher:
    """Confirms every publish unless its message id is in `refused`; `gate` (an Event) holds publishes back."""

    def __init__(self, refused=(), timeout=0.5, waiting=0):
        self.refused, self.timeout, self.waiting = set(refused), timeout, waiting
        self.published = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def publish_all(self, queue, messages):
        await self.gate.wait()
        self.published.extend((queue, mid, body) for mid, body, _trace in messages)
        return [mid for mid, *_ in messages if mid not in self.refused]

    async def waiting_count(self, queue):
        return self.waiting


class FakeDatabase:
    """`run(work, *args)` calls `work(cursor, *args)` with a stand-in cursor and records the call."""

    def __init__(self):
        self.calls = []

    async def run(self, work, *args, transaction=True, retry_seconds=None):
        self.calls.append((work.__name__, args))
        return await work(object(), *args)


class Kicks:
    """A `kick` callable that counts its calls."""

    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1
