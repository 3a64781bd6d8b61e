"""Small fakes of the broker and the database for the unit layer: enough to drive batching and acking, the
publish window, both fast paths and both relays without a server. The integration tests use the real ones."""
import asyncio
import json
from dataclasses import dataclass, field

from common.broker.consumer import Received
from common.broker.packing import Entry
from common.web.errors import InvalidMessage

# The broker user the fake messages come from, and the one queue consumers take them from.
PUBLISHER = "publisher"
PUBLISHERS = (PUBLISHER,)


class FakeDeadLetters:
    """The publishing channel dead letters go out on: confirms every copy unless `refuse`, and keeps
    (queue, message id, reason) of each (the whole message in `messages`, its body in `bodies`)."""

    def __init__(self, refuse=False):
        self.copies, self.bodies, self.messages, self.refuse = [], [], [], refuse
        self.default_exchange = self

    async def publish(self, message, routing_key, mandatory, timeout):
        if self.refuse:
            raise TimeoutError("no confirm")
        self.copies.append((routing_key, message.message_id, message.headers["x-shop-reason"]))
        self.bodies.append(message.body)
        self.messages.append(message)


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
    user_id: str = PUBLISHER
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
    """Confirms every row unless its id is in `refused`; `gate` (an Event) holds publishes back. Keeps each
    (queue, row id, entry) published, and the row ids of each `publish_all` call (`calls`)."""

    def __init__(self, refused=(), timeout=0.5, waiting=0):
        self.refused, self.timeout, self.waiting = set(refused), timeout, waiting
        self.published, self.calls = [], []
        self.gate = asyncio.Event()
        self.gate.set()

    async def publish_all(self, queue, rows):
        await self.gate.wait()
        self.published.extend((queue, row_id, entry) for row_id, entry, _trace in rows)
        self.calls.append([row_id for row_id, *_ in rows])
        return [row_id for row_id, *_ in rows if row_id not in self.refused]

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


class Number:
    """A message type whose entries are `{"n": <integer>}`, read as the integer."""
    FIELDS = ("n",)

    @classmethod
    def from_entry(cls, data):
        if not isinstance(data["n"], int):
            raise InvalidMessage("not a number")
        return data["n"]


def received(message, *items):
    """`message` delivered with these items (or the `InvalidMessage`s they were refused with) as its entries."""
    return Received(message, [Entry(item, None, json.dumps({"entry": str(item)})) for item in items])


def unreadable(message, reason):
    """`message` delivered with a body that cannot be read at all."""
    return Received(message, InvalidMessage(reason))
