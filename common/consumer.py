"""The consuming side of the broker: messages taken in batches, each batch handled in one call (one
transaction) and only then acknowledged; what can never be processed goes to the dead-letter queue."""
import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel
from tenacity import AsyncRetrying, retry_if_exception_type, stop_never, wait_exponential

from common import tracing
from common.dead_letters import dead_letter
from common.errors import InvalidMessage, Unavailable
from common.metrics import CONSUMED, DEAD_LETTERED

logger = logging.getLogger(__name__)

# `decode(body)` turns a body into an item or raises `InvalidMessage`.
Decode = Callable[[bytes], Any]
# `await handle_batch(items)` processes the items in one transaction and returns {index: reason} of those to
# dead-letter (indexes into `items`). Raising `Unavailable` means "try the batch again"; any other exception,
# or an index `items` does not have, is a bug.
HandleBatch = Callable[[list], Awaitable[dict]]


class BatchConsumer:
    """One queue's messages, in delivery order: each batch is handled and acknowledged before the next."""

    def __init__(self, queue: str, decode: Decode, handle_batch: HandleBatch, batch_size: int,
                 dead_letters_via: AbstractRobustChannel) -> None:
        self.queue = queue
        # Dead letters go out on the publishing connection: RabbitMQ blocks a connection that publishes
        # during a memory alarm, and the consumer's own acks must not wait behind that.
        self.dead_letters_via = dead_letters_via
        self.decode = decode
        self.handle_batch = handle_batch
        self.batch_size = batch_size
        self.pending: asyncio.Queue = asyncio.Queue()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            self.pending.put_nowait((message, self.decode(message.body)))
        except InvalidMessage as exc:
            # Acknowledged by `process` like the rest, so that messages are acknowledged in delivery order.
            self.pending.put_nowait((message, exc))

    async def run(self) -> None:
        while True:
            batch = [await self.pending.get()]
            while len(batch) < self.batch_size and not self.pending.empty():
                batch.append(self.pending.get_nowait())
            await self.process(batch)

    async def process(self, batch: Sequence[tuple[AbstractIncomingMessage, Any]]) -> None:
        """Handle the decoded items of a batch of (message, item or InvalidMessage) in one call, then
        acknowledge every message of the batch.

        With tracing on, each message gets a span of its own, from the batch's start to its acknowledgement:
        one span for the batch, linked to the messages' traces, would leave the orders' own traces without
        their payment (or their final status), and each order must be one trace end to end."""
        with tracing.current.process(self.queue, batch) as traced_batch:
            await self._process(traced_batch)

    async def _process(self, batch: Sequence[tuple[AbstractIncomingMessage, Any]]) -> None:
        rejected = {id(message): str(item) for message, item in batch if isinstance(item, InvalidMessage)}
        valid = [(message, item) for message, item in batch if id(message) not in rejected]
        try:
            invalid = await self._handle([item for _, item in valid]) if valid else {}
        except Exception:
            # A bug, not an outage: give each message one more chance, then dead-letter it.
            logger.exception("batch of %d messages from %s failed", len(valid), self.queue)
            for message, _ in valid:
                if message.redelivered:
                    await self._reject(message, "processing failed twice")
                else:
                    await acknowledge(message.nack(requeue=True))
            valid, invalid = [], {}
        rejected.update((id(valid[index][0]), reason) for index, reason in invalid.items())
        await self._ack_batch([message for message, _ in batch], rejected,
                              [message for message, _ in valid if id(message) not in rejected])

    async def _handle(self, items: list) -> dict:
        """{index: reason} of the items to dead-letter, as `handle_batch` returned it; raises `ValueError` if
        that names an index the batch does not have.

        Such an answer is a bug like any exception (`_process` requeues the batch once, then dead-letters it):
        acking the batch would lose the dead letter the handler meant for one of its items, and the handler's
        commit is safe to redo (the inbox and the orders' final status are idempotent)."""
        async for attempt in AsyncRetrying(retry=retry_if_exception_type(Unavailable),
                                           wait=wait_exponential(multiplier=0.1, max=5), stop=stop_never):
            with attempt:
                invalid = await self.handle_batch(items)
        unknown = [index for index in invalid if index not in range(len(items))]
        if unknown:
            raise ValueError(f"the handler refused items {unknown} of a batch of {len(items)}")
        return invalid

    async def _ack_batch(self, messages: list, rejected: dict, acked: list) -> None:
        """Dead-letter the `rejected` messages of a batch ({id: reason}), then ack the `acked` ones with one
        `multiple` ack of the last of them: one frame instead of one per message.

        Sound because a batch holds every delivery of its channel up to that message that is not acknowledged
        yet: deliveries arrive in order, are batched in order, and each batch is acknowledged before the next."""
        for message in messages:
            if id(message) in rejected:
                await self._reject(message, rejected[id(message)])
        if not acked:
            return
        tags = [message.delivery_tag for message in messages]
        if all(earlier < later for earlier, later in zip(tags, tags[1:])):
            await acknowledge(acked[-1].ack(multiple=True))
        else:
            # Tags restarted: the channel was replaced mid-batch (a reconnect). Deliveries of the old one are
            # redelivered anyway, and a `multiple` ack must not be taken to reach across channels.
            for message in acked:
                await acknowledge(message.ack())
        CONSUMED.labels(self.queue).inc(len(acked))

    async def _reject(self, message: AbstractIncomingMessage, reason: str) -> None:
        logger.error("dead-lettering message %s from %s: %s", message.message_id, self.queue, reason)
        if await dead_letter(message, self.queue, reason, self.dead_letters_via):
            DEAD_LETTERED.labels(self.queue).inc()


async def acknowledge(ack_or_reject: Awaitable) -> None:
    """Ack/nack/reject; if the channel died meanwhile the broker redelivers, which the handlers tolerate."""
    try:
        await ack_or_reject
    except Exception as exc:  # noqa: BLE001 - any channel failure means "will be redelivered"
        logger.warning("could not acknowledge message: %r", exc)


class Consumer:
    """The consuming channel, and a `BatchConsumer` task for each queue it consumes."""

    def __init__(self, channel: AbstractRobustChannel, dead_letters_via: AbstractRobustChannel) -> None:
        self.channel = channel
        self.dead_letters_via = dead_letters_via
        self._tasks: list[asyncio.Task] = []

    async def consume(self, queue: str, decode: Decode, handle_batch: HandleBatch, batch_size: int) -> None:
        batches = BatchConsumer(queue, decode, handle_batch, batch_size, self.dead_letters_via)
        await (await self.channel.get_queue(queue)).consume(batches.on_message)
        self._tasks.append(asyncio.create_task(batches.run(), name=f"consumer of {queue}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, running = await asyncio.wait(self._tasks, timeout=5)
            if running:
                logger.warning("%d consumers still running 5 s after being cancelled", len(running))
