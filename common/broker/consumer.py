"""The consuming side of the broker: messages taken in batches, the entries of each batch handled in one call
(one transaction) and only then acknowledged; what can never be processed goes to the dead-letter queue: a
message that cannot be read at all as it is, a malformed entry of a message of several on its own.

A queue takes messages from its publishers only: a message's `user_id` property must name one of them.
RabbitMQ refuses a publish whose `user_id` is not the publishing connection's user, so it names who really
published the message; a message without it, or from anyone else (e.g. a payment result published with the
Order Service's credentials, which may write to the default exchange like any service), is dead-lettered
unread (`WrongPublisher`) and changes nothing (docs/security-credentials.md)."""
import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, NamedTuple

from aio_pika.abc import AbstractIncomingMessage
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, stop_never, wait_exponential

from common.broker.amqp_nodes import NodeChannel
from common.broker.dead_lettering import REQUEUE_PAUSE, dead_letter, dead_letter_entries
from common.broker.packing import Entry, EntryType, unpack
from common.domain.errors import InvalidMessage, Unavailable
from common.observability import tracing
from common.observability.metrics import CONSUMED, DEAD_LETTERED, ENTRIES_CONSUMED
from common.runtime.stopping import cancel, cancelled_means_gone

logger = logging.getLogger(__name__)

# `await handle_batch(items)` processes the items (the entries of a batch's messages) in one transaction and
# returns {index: reason} of those to dead-letter (indexes into `items`). Raising `Unavailable` means "try the
# batch again"; any other exception, or an index `items` does not have, is a bug.
HandleBatch = Callable[[list[Any]], Awaitable[dict[int, str]]]
# `await probe()` raises `Unavailable` while the database `handle_batch` writes to does not answer.
Probe = Callable[[], Awaitable[object]]

# Seconds between two probes of the database while stepped aside.
PROBE_INTERVAL = 1.0


class WrongPublisher(InvalidMessage):
    """A message whose `user_id` (None: it has none) is not one of the users its queue takes messages from."""

    def __init__(self, user_id: str | None, queue: str, publishers: Collection[str]) -> None:
        self.user_id = user_id
        who = f"published by {user_id!r}" if user_id else "published without a user_id"
        super().__init__(f"{who}; {queue} takes messages from {' or '.join(map(repr, sorted(publishers)))} only")


class Received(NamedTuple):
    """A message as delivered, and its entries read (`common.broker.packing.unpack`), or why it cannot be read."""
    message: AbstractIncomingMessage
    entries: list[Entry] | InvalidMessage

    @property
    def size(self) -> int:
        return 1 if isinstance(self.entries, InvalidMessage) else len(self.entries)


class BatchConsumer:
    """One queue's messages, in delivery order: each batch is handled and acknowledged before the next.

    With a `probe` of its database, the channel it consumes on (`consuming`) and `step_aside_after` seconds (the
    setting CONSUMER_STEP_ASIDE_AFTER), it steps aside when a batch has found the database unavailable for that
    long: it stops consuming, gives the batch and every message prefetched behind it back to the queue (for
    another replica, whose database answers: one cut off from its own would hold them until the heal), and
    consumes again once the probe passes. Without them it retries the batch for as long as it takes."""

    def __init__(self, queue: str, kind: EntryType, handle_batch: HandleBatch, batch_size: int,
                 dead_letters_via: NodeChannel, publishers: Collection[str],
                 publish_as: str | None = None, requeue_pause: float = REQUEUE_PAUSE,
                 consuming: NodeChannel | None = None, probe: Probe | None = None,
                 step_aside_after: float = 0.0) -> None:
        self.queue = queue
        self.requeue_pause = requeue_pause  # before a message whose dead letter was not stored is requeued
        # Dead letters go out on the publishing connection: RabbitMQ blocks a connection that publishes
        # during a memory alarm, and the consumer's own acks must not wait behind that. They are published as
        # `publish_as`, that connection's user.
        self.dead_letters_via = dead_letters_via
        self.publish_as = publish_as
        self.publishers = frozenset(user for user in publishers if user)
        if not self.publishers:
            raise ValueError(f"{queue}: no publisher to take messages from")
        self.kind = kind
        self.handle_batch = handle_batch
        self.batch_size = batch_size
        self.pending: asyncio.Queue[Received] = asyncio.Queue()
        self.consuming, self.step_aside_after = consuming, step_aside_after
        self.probe = probe if consuming is not None and step_aside_after > 0 else None

    async def start(self) -> None:
        """Consume the queue on `consuming`."""
        assert self.consuming is not None
        await self.consuming.consume(self.queue, self.on_message)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        # Refused messages are acknowledged by `process` like the rest, so that messages are acknowledged in
        # delivery order.
        if message.user_id not in self.publishers:
            self.pending.put_nowait(Received(message, WrongPublisher(message.user_id, self.queue, self.publishers)))
            return
        header = (message.headers or {}).get(tracing.HEADER)
        try:
            entries: list[Entry] | InvalidMessage = unpack(message.body, header if isinstance(header, str) else None,
                                                           self.kind)
        except InvalidMessage as exc:
            entries = exc
        self.pending.put_nowait(Received(message, entries))

    async def run(self) -> None:
        while True:
            batch = [await self.pending.get()]
            # Up to `batch_size` entries (one transaction's worth), in whole messages: a message is acked whole.
            size = batch[0].size
            while size < self.batch_size and not self.pending.empty():
                batch.append(self.pending.get_nowait())
                size += batch[-1].size
            try:
                await self.process(batch)
            except Unavailable as exc:
                await self._step_aside(batch, exc)

    async def _step_aside(self, batch: Sequence[Received], exc: Unavailable) -> None:
        """Stop consuming, give back what is held, wait for the database to answer, consume again."""
        assert self.consuming is not None and self.probe is not None
        await self.consuming.cancel(self.on_message)
        await asyncio.sleep(0)  # deliveries already handed to `on_message` reach `pending` first
        held = [*batch]
        while not self.pending.empty():
            held.append(self.pending.get_nowait())
        logger.warning("%s: the database has not answered for %ss (%s): %d messages given back to the queue for "
                       "another replica; consuming again once it answers", self.queue, self.step_aside_after, exc,
                       len(held))
        for received in held:
            await acknowledge(received.message.nack(requeue=True))
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                await self.probe()
                break
            except Unavailable:
                continue
        await self.start()
        logger.warning("%s: the database answers: consuming again", self.queue)

    async def process(self, batch: Sequence[Received]) -> None:
        """Handle the entries of a batch's messages in one call, then acknowledge every message of the batch.

        With tracing on, each entry gets a span of its own, from the batch's start to its acknowledgement:
        one span for the batch, linked to the entries' traces, would leave the orders' own traces without
        their payment (or their final status), and each order must be one trace end to end."""
        readable = [(m, e, entry) for m, received in enumerate(batch)
                    if not isinstance(received.entries, InvalidMessage) for e, entry in enumerate(received.entries)]
        spans = [(batch[m].message.message_id, entry.trace, getattr(entry.item, "order_id", None))
                 for m, _, entry in readable]
        refused: list[dict[int, str]] = [{} for _ in batch]  # per message: {entry index: reason}
        valid: list[Any] = []                  # the items to handle
        places: list[tuple[int, int]] = []     # (message index, entry index) of each
        with tracing.current.process(self.queue, spans) as traces:
            for (m, e, entry), trace in zip(readable, traces):
                if isinstance(entry.item, InvalidMessage):
                    refused[m][e] = str(entry.item)
                else:
                    valid.append(entry.item.traced(trace) if trace else entry.item)
                    places.append((m, e))
            failed: set[int] = set()
            try:
                invalid = await self._handle(valid) if valid else {}
            except Unavailable:
                raise  # for `step_aside_after` seconds: the consumer steps aside
            except Exception:
                # A bug, not an outage: give each message one more chance, then dead-letter it.
                logger.exception("batch of %d entries from %s failed", len(valid), self.queue)
                failed, invalid = {m for m, _ in places}, {}
            for index, reason in invalid.items():
                m, e = places[index]
                refused[m][e] = reason
            acked: list[AbstractIncomingMessage] = []
            processed = 0
            for m, received in enumerate(batch):
                unprocessed = isinstance(received.entries, InvalidMessage) or refused[m] or m in failed
                if unprocessed and not await self._dispose(received, refused[m], m in failed):
                    continue
                acked.append(received.message)
                processed += received.size - len(refused[m])
            await self._ack_batch([received.message for received in batch], acked)
        ENTRIES_CONSUMED.labels(self.queue).inc(processed)

    async def _handle(self, items: list[Any]) -> dict[int, str]:
        """{index: reason} of the items to dead-letter, as `handle_batch` returned it; raises `ValueError` if
        that names an index the batch does not have.

        Such an answer is a bug like any exception (`process` requeues the batch once, then dead-letters it):
        acking the batch would lose the dead letter the handler meant for one of its items, and the handler's
        commit is safe to redo (the inbox and the orders' final status are idempotent)."""
        stop = stop_never if self.probe is None else stop_after_delay(self.step_aside_after)
        async for attempt in AsyncRetrying(retry=retry_if_exception_type(Unavailable), reraise=True,
                                           wait=wait_exponential(multiplier=0.1, max=5), stop=stop):
            with attempt:
                invalid = await self.handle_batch(items)
        unknown = [index for index in invalid if index not in range(len(items))]
        if unknown:
            raise ValueError(f"the handler refused items {unknown} of a batch of {len(items)}")
        return invalid

    async def _dispose(self, received: Received, refused: dict[int, str], failed: bool) -> bool:
        """What a message not processed whole needs besides the batch's ack; True if the batch's ack is still
        to take it.

        A message that cannot be read, or of one entry that is refused, goes to the dead-letter queue whole, as
        it came (acked there once the copy is confirmed); one of several keeps its processed entries and sends
        each refused one there on its own."""
        message = received.message
        if isinstance(received.entries, InvalidMessage):
            await self._reject(message, received.entries)
        elif failed and message.redelivered:
            await self._reject(message, "processing failed twice")
        elif failed:
            await acknowledge(message.nack(requeue=True))
        elif len(received.entries) == 1:
            await self._reject(message, refused[0])
        else:
            return await self._reject_entries(message, received.entries, refused)
        return False

    async def _ack_batch(self, messages: list[AbstractIncomingMessage], acked: list[AbstractIncomingMessage]) -> None:
        """Ack the `acked` messages of a batch with one `multiple` ack of the last of them: one frame instead
        of one per message. The others of the batch were dead-lettered or requeued before.

        Sound because a batch holds every delivery of its channel up to that message that is not acknowledged
        yet: deliveries arrive in order, are batched in order, and each batch is acknowledged before the next."""
        if not acked:
            return
        tags = [message.delivery_tag or 0 for message in messages]  # (a consumed message always has one)
        if all(earlier < later for earlier, later in zip(tags, tags[1:])):
            await acknowledge(acked[-1].ack(multiple=True))
        else:
            # Tags restarted: the channel was replaced mid-batch (a reconnect). Deliveries of the old one are
            # redelivered anyway, and a `multiple` ack must not be taken to reach across channels.
            for message in acked:
                await acknowledge(message.ack())
        CONSUMED.labels(self.queue).inc(len(acked))

    async def _reject(self, message: AbstractIncomingMessage, reason: str | InvalidMessage) -> None:
        refused_publisher = None
        if isinstance(reason, WrongPublisher):
            # Not a bug of ours to fix but someone else's message (or a misconfigured BROKER_USER setting).
            logger.warning("refusing message %s from %s, dead-lettered unread: %s", message.message_id, self.queue,
                           reason)
            refused_publisher = reason.user_id or ""
        else:
            logger.error("dead-lettering message %s from %s: %s", message.message_id, self.queue, reason)
        if await dead_letter(message, self.queue, str(reason), self.dead_letters_via, self.publish_as,
                             refused_publisher, self.requeue_pause):
            DEAD_LETTERED.labels(self.queue).inc()

    async def _reject_entries(self, message: AbstractIncomingMessage, entries: list[Entry],
                              refused: dict[int, str]) -> bool:
        for index, reason in refused.items():
            logger.error("dead-lettering entry %d of message %s from %s: %s", index, message.message_id, self.queue,
                         reason)
        if await dead_letter_entries(message, self.queue, [(index, entries[index].text, reason)
                                                           for index, reason in refused.items()],
                                     self.dead_letters_via, self.publish_as, self.requeue_pause):
            DEAD_LETTERED.labels(self.queue).inc(len(refused))
            return True
        return False


async def acknowledge(ack_or_reject: Awaitable[object]) -> None:
    """Ack/nack/reject; if the channel died meanwhile the broker redelivers, which the handlers tolerate."""
    try:
        with cancelled_means_gone("the consumer's channel"):
            await ack_or_reject
    except Exception as exc:  # noqa: BLE001 - any channel failure means "will be redelivered"
        logger.warning("could not acknowledge message: %r", exc)


class Consumer:
    """The consuming channel, and a `BatchConsumer` task for each queue it consumes; dead letters go out on
    `dead_letters_via` as `publish_as` (its connection's user)."""

    def __init__(self, channel: NodeChannel, dead_letters_via: NodeChannel,
                 publish_as: str | None = None) -> None:
        self.channel = channel
        self.dead_letters_via = dead_letters_via
        self.publish_as = publish_as
        self._tasks: list[asyncio.Task[None]] = []

    async def consume(self, queue: str, kind: EntryType, handle_batch: HandleBatch, batch_size: int,
                      publishers: Collection[str], probe: Probe | None = None,
                      step_aside_after: float = 0.0) -> None:
        """Consume `queue`, taking messages whose `user_id` is one of `publishers` (empty names are left out;
        raises `ValueError` if none is left) and dead-lettering the others unread. With `probe` (of the database
        `handle_batch` writes to) and `step_aside_after` seconds, step aside while that database is away
        (`BatchConsumer`)."""
        batches = BatchConsumer(queue, kind, handle_batch, batch_size, self.dead_letters_via, publishers,
                                self.publish_as, consuming=self.channel, probe=probe,
                                step_aside_after=step_aside_after)
        await batches.start()
        self._tasks.append(asyncio.create_task(batches.run(), name=f"consumer of {queue}"))

    async def stop(self) -> None:
        await asyncio.gather(*(cancel(task, 5, task.get_name()) for task in self._tasks))
