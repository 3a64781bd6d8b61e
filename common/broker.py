"""RabbitMQ: a robust connection, durable queues with dead-letter queues, confirmed publishing and
batching consumers."""
import asyncio
import functools
import logging

import aio_pika
from tenacity import AsyncRetrying, retry_if_exception_type, stop_never, wait_exponential

from common.dead_letters import dead_letter, dead_letter_queue
from common.errors import InvalidMessage, Unavailable
from common.messages import ORDER_REQUESTS, PAYMENT_RESULTS
from common.metrics import CONSUMED, DEAD_LETTERED, PUBLISH_FAILED, PUBLISHED, RECONNECTS
from common.retry import BROKER_ERRORS, until_connected

logger = logging.getLogger(__name__)

# Messages `publish_soon` may hold unconfirmed at once: this bounds the memory they take, and beyond it their
# producers wait (back-pressure: no more orders are taken in, no more requests settled, than can be sent on).
# At least a consumer's batch; small enough that a wait for room tracks the broker's pace.
MAX_SENDING = 256


class Broker:
    """Two robust connections: one for a confirming publisher channel, one for a consumer channel.

    Apart because RabbitMQ's flow control throttles a connection that publishes faster than the broker
    writes: on a shared connection the consumer's acks would wait behind the publishes, its prefetch window
    would stay full, and consuming would stall for as long as publishing is fast (seen under load: no payment
    result applied for seconds). RabbitMQ's documentation advises the same."""

    def __init__(self, connections, publisher, consumer, publish_timeout):
        self.connections = connections
        self.publisher = publisher
        self.consumer = consumer
        self.publish_timeout = publish_timeout
        self._drains = []
        self._sending = set()
        self._sending_count = 0
        self._room = asyncio.Event()
        self._room.set()

    @classmethod
    async def connect(cls, url, prefetch, publish_timeout=5.0):
        """Wait for the broker, then declare both queues (and their dead-letter queues)."""
        connections = [await connect_robust(url) for _ in range(2)]
        publisher = await connections[0].channel(publisher_confirms=True, on_return_raises=True)
        consumer = await connections[1].channel()
        await consumer.set_qos(prefetch_count=prefetch)
        for name in (ORDER_REQUESTS, PAYMENT_RESULTS):
            await declare_queue(publisher, name)
        logger.info("connected to RabbitMQ")
        return cls(connections, publisher, consumer, publish_timeout)

    def is_connected(self):
        # `connection.is_closed` stays False during an outage; the `connected` event does not.
        return all(connection.connected.is_set() for connection in self.connections)

    async def publish(self, queue, body, message_id):
        """Publish a persistent message and wait for the broker's confirm.

        Raises one of `BROKER_ERRORS` or `aio_pika.exceptions.DeliveryError` if it was not confirmed."""
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                   content_type="application/json", message_id=str(message_id))
        await self.publisher.default_exchange.publish(message, routing_key=queue, timeout=self.publish_timeout)

    async def ready_count(self, queue):
        """Messages in `queue` not yet delivered to any consumer: one passive declare, one round trip.

        (aio-pika's robust channel answers a passive `declare_queue` from its cache, hence the raw channel.)"""
        channel = await self.publisher.get_underlay_channel()
        return (await channel.queue_declare(queue, passive=True)).message_count

    async def publish_all(self, queue, messages):
        """Publish `(message_id, body)` pairs concurrently; return the ids the broker confirmed."""
        results = await asyncio.gather(*(self.publish(queue, body, mid) for mid, body in messages),
                                       return_exceptions=True)
        confirmed = []
        for (mid, _), result in zip(messages, results):
            if isinstance(result, asyncio.CancelledError):
                raise result
            if isinstance(result, BaseException):
                PUBLISH_FAILED.labels(queue).inc()
                logger.warning("publish of %s to %s not confirmed: %r", mid, queue, result)
            else:
                PUBLISHED.labels(queue).inc()
                confirmed.append(mid)
        return confirmed

    def publish_soon(self, queue, messages, then):
        """Publish `(message_id, body)` pairs in the background, then `await then(confirmed ids, unconfirmed ids)`.

        The fast path, for messages whose outbox rows are already committed: the caller goes on at once, and
        if this never completes (a crash) the outbox still holds the rows. `close` waits for these first.
        Callers keep to `has_room` / `room` (a soft limit: a few requests may pass it at the same moment)."""
        self._sending_count += len(messages)
        if not self.has_room():
            self._room.clear()
        task = asyncio.create_task(self._publish_then(queue, messages, then))
        self._sending.add(task)
        task.add_done_callback(functools.partial(self._sent, len(messages)))

    def has_room(self):
        return self._sending_count < MAX_SENDING

    async def room(self, timeout=None):
        """Return True once `publish_soon` has room (False if there is none after `timeout` seconds)."""
        if self._room.is_set():
            return True  # the usual case, without the task and timer of `wait_for`
        try:
            await asyncio.wait_for(self._room.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _sent(self, count, task):
        self._sending.discard(task)
        self._sending_count -= count
        if self.has_room():
            self._room.set()

    async def _publish_then(self, queue, messages, then):
        try:
            confirmed = set(await self.publish_all(queue, messages))
            await then([mid for mid, _ in messages if mid in confirmed],
                       [mid for mid, _ in messages if mid not in confirmed])
        except Exception as exc:  # noqa: BLE001 - the outbox relay sends whatever this left undone
            logger.warning("immediate publish to %s: follow-up failed (the relay takes over): %r", queue, exc)

    async def consume(self, queue, decode, handle_batch, batch_size):
        """Consume `queue` in batches.

        `decode(body)` turns a body into an item or raises `InvalidMessage` (dead-lettered).
        `await handle_batch(items)` processes the items in one transaction and returns a dict
        {index: reason} of items to dead-letter; all other messages are acked after it returns.
        If it raises `Unavailable` the batch is retried until it succeeds."""
        pending = asyncio.Queue()

        async def on_message(message):
            try:
                pending.put_nowait((message, decode(message.body)))
            except InvalidMessage as exc:
                # Settled by `drain` like the rest, so that messages are settled in delivery order.
                pending.put_nowait((message, exc))

        amqp_queue = await self.consumer.get_queue(queue)
        await amqp_queue.consume(on_message)
        self._drains.append(asyncio.create_task(drain(pending, queue, handle_batch, batch_size, self.publisher)))

    async def close(self):
        for task in self._drains:
            task.cancel()
        if self._drains:
            _, running = await asyncio.wait(self._drains, timeout=5)
            if running:
                logger.warning("%d consumers still running 5 s after being cancelled", len(running))
        if self._sending:
            # Each publish ends within `publish_timeout`; the relay re-sends anything cut off here.
            _, running = await asyncio.wait(self._sending, timeout=self.publish_timeout)
            if running:
                logger.warning("%d immediate publishes unfinished at close", len(running))
        try:
            await asyncio.wait_for(asyncio.gather(*(connection.close() for connection in self.connections)), 5)
        except asyncio.TimeoutError:
            logger.warning("the broker did not acknowledge closing the connections within 5 s")


async def connect_robust(url):
    async for attempt in until_connected(BROKER_ERRORS):
        with attempt:
            # A short reconnect interval keeps recovery after a broker restart within a second or two.
            connection = await aio_pika.connect_robust(url, reconnect_interval=1)
    connection.reconnect_callbacks.add(lambda *_: RECONNECTS.inc())
    return connection


async def declare_queue(channel, name):
    await channel.declare_queue(dead_letter_queue(name), durable=True)
    return await channel.declare_queue(name, durable=True, arguments={
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead_letter_queue(name),
    })


async def reject(message, queue, reason, dead_letters_via):
    logger.error("dead-lettering message %s from %s: %s", message.message_id, queue, reason)
    if await dead_letter(message, queue, reason, dead_letters_via):
        DEAD_LETTERED.labels(queue).inc()


async def settle(ack_or_reject):
    """Ack/reject; if the channel died meanwhile the broker redelivers, which the handlers tolerate."""
    try:
        await ack_or_reject
    except Exception as exc:  # noqa: BLE001 - any channel failure means "will be redelivered"
        logger.warning("could not settle message: %r", exc)


async def drain(pending, queue, handle_batch, batch_size, dead_letters_via):
    while True:
        batch = [await pending.get()]
        while len(batch) < batch_size and not pending.empty():
            batch.append(pending.get_nowait())
        await process_batch(batch, queue, handle_batch, dead_letters_via)


async def process_batch(batch, queue, handle_batch, dead_letters_via):
    """Handle the decoded items of a batch of (message, item or InvalidMessage) in one call, then settle
    every message of the batch."""
    rejected = {id(message): str(item) for message, item in batch if isinstance(item, InvalidMessage)}
    valid = [(message, item) for message, item in batch if id(message) not in rejected]
    try:
        async for attempt in AsyncRetrying(retry=retry_if_exception_type(Unavailable),
                                           wait=wait_exponential(multiplier=0.1, max=5), stop=stop_never):
            with attempt:
                invalid = await handle_batch([item for _, item in valid]) if valid else {}
    except Exception:
        # A bug, not an outage: give each message one more chance, then dead-letter it.
        logger.exception("batch of %d messages from %s failed", len(valid), queue)
        for message, _ in valid:
            if message.redelivered:
                await reject(message, queue, "processing failed twice", dead_letters_via)
            else:
                await settle(message.nack(requeue=True))
        valid, invalid = [], {}
    rejected.update((id(valid[index][0]), reason) for index, reason in invalid.items())
    await settle_batch([message for message, _ in batch], rejected,
                       [message for message, _ in valid if id(message) not in rejected], queue, dead_letters_via)


async def settle_batch(messages, rejected, acked, queue, dead_letters_via):
    """Dead-letter the `rejected` messages of a batch ({id: reason}), then ack the `acked` ones with one
    `multiple` ack of the last of them: one frame instead of one per message.

    Sound because a batch holds every delivery of its channel up to that message that is not settled yet:
    deliveries arrive in order, are batched in order, and each batch is settled before the next is taken."""
    for message in messages:
        if id(message) in rejected:
            await reject(message, queue, rejected[id(message)], dead_letters_via)
    if not acked:
        return
    tags = [message.delivery_tag for message in messages]
    if all(earlier < later for earlier, later in zip(tags, tags[1:])):
        await settle(acked[-1].ack(multiple=True))
    else:
        # Tags restarted: the channel was replaced mid-batch (a reconnect). Deliveries of the old one are
        # redelivered anyway, and a `multiple` ack must not be taken to reach across channels.
        for message in acked:
            await settle(message.ack())
    CONSUMED.labels(queue).inc(len(acked))
