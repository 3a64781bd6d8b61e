"""The publishing side of the broker: confirmed publishes of outbox rows, several to a message
(`ENTRIES_PER_MESSAGE`, `common.broker.packing`), and the bounded window of publishes sent in the background right
after a commit (the fast path), which also packs the rows that several commits hand it in one event-loop tick."""
import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any

import aio_pika

from common.broker.amqp_nodes import NodeChannel
from common.broker.packing import pack
from common.observability import tracing
from common.observability.metrics import PUBLISH_FAILED, PUBLISHED, ROWS_PUBLISHED
from common.observability.tracing import HEADER, Trace
from common.runtime.stopping import cancelled_means_gone

logger = logging.getLogger(__name__)

# Rows a `PublishWindow` may hold unconfirmed at once: this bounds the memory they take, and beyond it their
# producers wait (back-pressure: no more orders are taken in, no more requests settled, than can be sent on).
# At least a consumer's batch; small enough that a wait for room tracks the broker's pace.
MAX_SENDING = 256

# Publishes in a row not confirmed within the publish timeout (and started since the last move) after which a
# `Publisher` leaves its node for the next (`leave_node`): a node cut off from the cluster's majority, or hung,
# keeps its connection open while a quorum queue cannot confirm, until its heartbeat gives up (up to 3 times
# the heartbeat, 3 minutes by default). Three: one slow confirm is no reason to move, a node silent for three
# timeouts (15 s at the default 5 s) is; concurrent publishes of one silent spell each count.
LEAVE_AFTER_TIMEOUTS = 3

# (row id, entry, the trace it continues or None): what a relay or a fast path hands over to be published.
Outgoing = tuple[Hashable, Mapping[str, Any], Trace]
# Called once a background send is over, with the row ids the broker confirmed and those it did not (each
# caller's own kind of id: `Any` here).
FollowUp = Callable[[list[Any], list[Any]], Awaitable[None]]


def message_id_of(ids: Sequence[Hashable]) -> str:
    """A message's id: its row's id, or for several rows the first one's and how many more ("1201+19")."""
    return str(ids[0]) if len(ids) == 1 else f"{ids[0]}+{len(ids) - 1}"


class Publisher:
    """Persistent messages on a channel with publisher confirms: a publish returns once the broker holds it.
    Rows go out up to `entries_per_message` to a message (1: one message per row, the format from before).

    Every message carries `user_id`, the user the channel's connection logged in as: RabbitMQ refuses a publish
    whose `user_id` is another user's, so a consumer can tell who published a message (`common.broker.consumer`).

    `leave_node(reason)`, if given, is called after `LEAVE_AFTER_TIMEOUTS` publishes in a row time out
    (`amqp_nodes.NodeConnection.move_on`; it returns whether it left)."""

    def __init__(self, channel: NodeChannel, timeout: float, entries_per_message: int = 1,
                 user_id: str | None = None, leave_node: Callable[[str], bool] | None = None) -> None:
        self.channel = channel
        self.timeout = timeout
        self.entries_per_message = entries_per_message
        self.user_id = user_id
        self.leave_node = leave_node
        self.timeouts = 0  # publishes timed out in a row, among those started since `moved_at`
        self.moved_at = float("-inf")

    async def publish(self, queue: str, body: bytes, message_id: Hashable,
                      headers: dict[str, Any] | None = None) -> None:
        """Publish one message to `queue` and wait for the broker's confirm.

        Raises one of `common.runtime.retry.BROKER_ERRORS` or `aio_pika.exceptions.DeliveryError` if not confirmed."""
        message = aio_pika.Message(body, headers=headers, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                   content_type="application/json", message_id=str(message_id), user_id=self.user_id)
        # aio-pika's timeout covers only the confirm: on a connection that is being made again (or was closed)
        # the publish first waits for a channel without end, and would hold its relay step with it.
        async with self._bounded():
            await self.channel.default_exchange.publish(message, routing_key=queue, timeout=self.timeout)
        self.timeouts = 0

    @contextlib.asynccontextmanager
    async def _bounded(self) -> AsyncIterator[None]:
        """The block within the publish timeout; a timeout counts toward leaving the node (`_timed_out`).

        A connection that closes under the block (its heartbeat found it stuck, the node went away) rejects the
        confirm it awaits with `CancelledError`: that is a publish not confirmed (`ConnectionError`), not a
        cancellation of the caller, whose loop (a relay, a background sender) would otherwise end with it."""
        started = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self.timeout):
                with cancelled_means_gone("the channel awaiting the broker's answer"):
                    yield
        except TimeoutError:
            self._timed_out(started)
            raise

    def _timed_out(self, started: float) -> None:
        if started < self.moved_at:
            return  # sent to the node left behind
        self.timeouts += 1
        if self.leave_node is not None and self.timeouts >= LEAVE_AFTER_TIMEOUTS:
            reason = f"{self.timeouts} publishes in a row not confirmed within {self.timeout} s"
            if self.leave_node(reason):
                self.timeouts, self.moved_at = 0, asyncio.get_running_loop().time()

    async def publish_entries(self, queue: str, rows: Sequence[Outgoing]) -> None:
        """Publish one message of these rows' entries; with tracing on, in a span of each row's trace, which
        the message carries on (the `traceparent` header of a message of one entry, a field of each of several).

        Raises like `publish`."""
        message_id = message_id_of([row_id for row_id, *_ in rows])
        with tracing.current.send(queue, message_id, [trace for *_, trace in rows]) as traces:
            if len(rows) == 1:
                body, headers = json.dumps(rows[0][1]).encode(), {HEADER: traces[0]} if traces[0] else None
            else:
                body, headers = pack([entry for _, entry, _ in rows], traces), None
            await self.publish(queue, body, message_id, headers)

    async def publish_all(self, queue: str, rows: Sequence[Outgoing]) -> list[Any]:
        """Publish the rows, `entries_per_message` to a message, the messages concurrently; return the ids of
        the rows whose message the broker confirmed (a message not confirmed leaves all its rows unsent).

        A single message is published by the calling task itself: its frame is written in this event-loop tick,
        not after a task of its own was scheduled."""
        size = self.entries_per_message
        messages = [rows[start:start + size] for start in range(0, len(rows), size)]
        if len(messages) == 1:
            results = [await self._outcome(queue, messages[0])]
        else:
            results = await asyncio.gather(*(self._outcome(queue, message) for message in messages))
        confirmed: list[Any] = []
        for message, result in zip(messages, results):
            if result is not None:
                PUBLISH_FAILED.labels(queue).inc()
                logger.warning("publish of %s to %s not confirmed: %r",
                               message_id_of([row_id for row_id, *_ in message]), queue, result)
            else:
                PUBLISHED.labels(queue).inc()
                ROWS_PUBLISHED.labels(queue).inc(len(message))
                confirmed.extend(row_id for row_id, *_ in message)
        return confirmed

    async def _outcome(self, queue: str, rows: Sequence[Outgoing]) -> Exception | None:
        """Publish one message of `rows`: None once confirmed, else why not."""
        try:
            await self.publish_entries(queue, rows)
        except Exception as exc:  # noqa: BLE001 - the caller counts and logs it, and leaves the rows unsent
            return exc
        return None

    async def waiting_count(self, queue: str) -> int:
        """Messages in `queue` not yet delivered to any consumer: one passive declare, one round trip.

        (On the underlying channel: a queue object would be kept for re-declaring, a count needs none.)

        Raises `TimeoutError` after the publish timeout, counted like a publish's: a relay step asks this while it
        holds its outbox rows, and a node gone silent, or a channel not open again, would otherwise hold the step,
        and every later one, until the heal."""
        async with self._bounded():
            channel = await self.channel.get_underlay_channel()
            return (await channel.queue_declare(queue, passive=True)).message_count or 0


class PublishWindow:
    """Publishes sent in the background, for rows already committed: the caller goes on at once, and if a send
    never completes (a crash) the outbox still holds the rows.

    Each queue and follow-up has one sender, a task that lives as long as the window: it sends what it was
    handed as soon as it is idle, and while a send waits for its confirm, the rows handed over meanwhile gather
    for the next one. So batches grow with the load and with the broker's confirm time, and no timer holds a
    row back: rows handed over in one event-loop tick (orders whose transactions committed together) share a
    send, and at low load each goes out alone in the tick after it was handed over. At most `limit` rows are
    unconfirmed at once; producers keep to `has_room` / `room` (a soft limit: a few requests may pass it at
    the same moment)."""

    def __init__(self, publisher: Publisher, limit: int = MAX_SENDING) -> None:
        self.publisher = publisher
        self.limit = limit
        self._count = 0
        self._room = asyncio.Event()
        self._room.set()
        self._senders: dict[tuple[str, FollowUp], _Sender] = {}

    @property
    def timeout(self) -> float:
        return self.publisher.timeout

    def send(self, queue: str, rows: Sequence[Outgoing], then: FollowUp) -> None:
        """Publish `rows` in the background, then `await then(confirmed ids, unconfirmed ids)`: once for all
        the rows of one send (those handed over with the same queue and follow-up while the previous send of
        that queue and follow-up was under way, or in the same tick)."""
        self._count += len(rows)
        if not self.has_room():
            self._room.clear()
        sender = self._senders.get((queue, then))
        if sender is None:
            sender = self._senders[(queue, then)] = _Sender(self._send, queue, then)
        sender.hand_over(rows)

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
        """Wait for the sends under way (each ends within the publish timeout; the relay re-sends what is cut off),
        then end the senders that are idle (the next `send` starts its sender again)."""
        busy = [sender for sender in self._senders.values() if not sender.idle.is_set()]
        if busy:
            waits = [asyncio.ensure_future(sender.idle.wait()) for sender in busy]
            _, running = await asyncio.wait(waits, timeout=self.timeout)
            for wait in running:
                wait.cancel()
            if running:
                logger.warning("%d immediate publishes unfinished at close", len(running))
        for key, sender in list(self._senders.items()):
            if sender.idle.is_set():
                sender.task.cancel()
                del self._senders[key]

    def _sent(self, count: int) -> None:
        self._count -= count
        if self.has_room():
            self._room.set()

    async def _send(self, queue: str, rows: Sequence[Outgoing], then: FollowUp) -> None:
        try:
            # A sender that ended would take every later row of its queue and never count it sent: the window
            # would fill for good, and every producer wait for room.
            with cancelled_means_gone("a send's channel or database"):
                confirmed = set(await self.publisher.publish_all(queue, rows))
                await then([row_id for row_id, *_ in rows if row_id in confirmed],
                           [row_id for row_id, *_ in rows if row_id not in confirmed])
        except Exception as exc:  # noqa: BLE001 - the outbox relay sends whatever this left undone
            logger.warning("immediate publish to %s: follow-up failed (the relay takes over): %r", queue, exc)
        finally:
            self._sent(len(rows))


class _Sender:
    """The rows a `PublishWindow` holds for one queue and follow-up, and the task that sends them."""

    def __init__(self, send: Callable[[str, Sequence[Outgoing], FollowUp], Awaitable[None]], queue: str,
                 then: FollowUp) -> None:
        self.rows: list[Outgoing] = []
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()  # set while no row waits and no send is under way
        self.idle.set()
        self.task = asyncio.create_task(self._run(send, queue, then), name=f"publish to {queue}")

    def hand_over(self, rows: Sequence[Outgoing]) -> None:
        self.rows.extend(rows)
        self.idle.clear()
        self.wake.set()

    async def _run(self, send: Callable[[str, Sequence[Outgoing], FollowUp], Awaitable[None]], queue: str,
                   then: FollowUp) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.rows:
                batch, self.rows = self.rows, []
                await send(queue, batch, then)
            self.idle.set()
