"""The publishing side of the broker: confirmed publishes, and the bounded window of publishes sent in the
background right after a commit (the fast path)."""
import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Hashable, Sequence

import aio_pika
from aio_pika.abc import AbstractRobustChannel

from common import tracing
from common.metrics import PUBLISH_FAILED, PUBLISHED
from common.tracing import Trace

logger = logging.getLogger(__name__)

# Messages a `PublishWindow` may hold unconfirmed at once: this bounds the memory they take, and beyond it their
# producers wait (back-pressure: no more orders are taken in, no more requests settled, than can be sent on).
# At least a consumer's batch; small enough that a wait for room tracks the broker's pace.
MAX_SENDING = 256

# (message id, body, the trace it continues or None): what a relay or a fast path hands over to be published.
Outgoing = tuple[Hashable, bytes, Trace]
# Called once a background send is over, with the ids the broker confirmed and those it did not.
FollowUp = Callable[[list, list], Awaitable[None]]


class Publisher:
    """Persistent messages on a channel with publisher confirms: a publish returns once the broker holds it."""

    def __init__(self, channel: AbstractRobustChannel, timeout: float) -> None:
        self.channel = channel
        self.timeout = timeout

    async def publish(self, queue: str, body: bytes, message_id: Hashable, trace: Trace = None) -> None:
        """Publish to `queue` and wait for the broker's confirm; with tracing on, in a span of the trace `trace`
        that the message's `traceparent` header continues.

        Raises one of `common.retry.BROKER_ERRORS` or `aio_pika.exceptions.DeliveryError` if not confirmed."""
        with tracing.current.send(queue, message_id, trace) as headers:
            message = aio_pika.Message(body, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                       content_type="application/json", message_id=str(message_id))
            # aio-pika's timeout covers only the confirm: on a connection that is being recovered (or was
            # closed) the publish first waits for a channel without end, and would hold its relay step with it.
            async with asyncio.timeout(self.timeout):
                await self.channel.default_exchange.publish(message, routing_key=queue, timeout=self.timeout)

    async def publish_all(self, queue: str, messages: Sequence[Outgoing]) -> list:
        """Publish the messages concurrently; return the ids the broker confirmed."""
        results = await asyncio.gather(*(self.publish(queue, body, mid, trace) for mid, body, trace in messages),
                                       return_exceptions=True)
        confirmed = []
        for (mid, *_), result in zip(messages, results):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                PUBLISH_FAILED.labels(queue).inc()
                logger.warning("publish of %s to %s not confirmed: %r", mid, queue, result)
            else:
                PUBLISHED.labels(queue).inc()
                confirmed.append(mid)
        return confirmed

    async def waiting_count(self, queue: str) -> int:
        """Messages in `queue` not yet delivered to any consumer: one passive declare, one round trip.

        (aio-pika's robust channel answers a passive `declare_queue` from its cache, hence the raw channel.)"""
        channel = await self.channel.get_underlay_channel()
        return (await channel.queue_declare(queue, passive=True)).message_count


class PublishWindow:
    """Publishes sent in the background, for messages whose outbox rows are already committed: the caller
    goes on at once, and if a send never completes (a crash) the outbox still holds the rows.

    At most `limit` messages are unconfirmed at once; producers keep to `has_room` / `room` (a soft limit:
    a few requests may pass it at the same moment)."""

    def __init__(self, publisher: Publisher, limit: int = MAX_SENDING) -> None:
        self.publisher = publisher
        self.limit = limit
        self._tasks: set[asyncio.Task] = set()
        self._count = 0
        self._room = asyncio.Event()
        self._room.set()

    @property
    def timeout(self) -> float:
        return self.publisher.timeout

    def send(self, queue: str, messages: Sequence[Outgoing], then: FollowUp) -> None:
        """Publish `messages` in the background, then `await then(confirmed ids, unconfirmed ids)`."""
        self._count += len(messages)
        if not self.has_room():
            self._room.clear()
        task = asyncio.create_task(self._send(queue, messages, then))
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._sent, len(messages)))

    def has_room(self) -> bool:
        return self._count < self.limit

    async def room(self, timeout: float | None = None) -> bool:
        """Return True once there is room (False if there is none after `timeout` seconds)."""
        if self._room.is_set():
            return True  # the usual case, without the task and timer of `wait_for`
        try:
            await asyncio.wait_for(self._room.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def drain(self) -> None:
        """Wait for the sends under way (each ends within the publish timeout; the relay re-sends what is cut off)."""
        if self._tasks:
            _, running = await asyncio.wait(self._tasks, timeout=self.timeout)
            if running:
                logger.warning("%d immediate publishes unfinished at close", len(running))

    def _sent(self, count: int, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self._count -= count
        if self.has_room():
            self._room.set()

    async def _send(self, queue: str, messages: Sequence[Outgoing], then: FollowUp) -> None:
        try:
            confirmed = set(await self.publisher.publish_all(queue, messages))
            await then([mid for mid, *_ in messages if mid in confirmed],
                       [mid for mid, *_ in messages if mid not in confirmed])
        except Exception as exc:  # noqa: BLE001 - the outbox relay sends whatever this left undone
            logger.warning("immediate publish to %s: follow-up failed (the relay takes over): %r", queue, exc)
