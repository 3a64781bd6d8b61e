"""Dead-lettering by the consuming service: the message moves to `<queue>.dead` with why and whence attached.

Why the service publishes the copy itself instead of `basic.reject(requeue=False)` into the queue's
dead-letter exchange:
- A reject carries no reason: RabbitMQ's `x-death` says only "rejected", so the reason would live in a log
  line alone. A copy carries it in its headers (`common.broker.dead_letter_headers`).
- RabbitMQ dead-letters without publisher confirms (quorum queues: at most once unless
  `x-dead-letter-strategy: at-least-once`): a rejected message whose dead-lettering fails is gone. Here the
  original is acked only after the broker confirmed the copy; if the copy is not confirmed the original is
  requeued, so it is never lost. A crash between the confirm and the ack leaves a second copy in the
  dead-letter queue (the original comes back and is dead-lettered again): at least once, and a replay of both
  is harmless since the inbox and the order status check deduplicate.
The copy goes out on the service's publishing channel, not on the consumer's connection: RabbitMQ blocks a
connection that publishes during a memory or disk alarm, and on the consumer's one that would also hold up
its acks (the reason the two connections are apart, see `common.broker.connection.Broker`)."""
import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from common.broker.amqp_nodes import NodeChannel
from common.broker.dead_letter_headers import dead_letter_queue, death_headers, utc_now
from common.runtime.stopping import cancelled_means_gone

logger = logging.getLogger(__name__)

CONFIRM_TIMEOUT = 5.0  # seconds; like the services' publish timeout
# Pause before requeueing a message whose copy was not stored: a dead-letter queue that keeps refusing (deleted,
# full with `reject-publish`) would otherwise bounce the message between consumer and broker as fast as they go.
REQUEUE_PAUSE = 1.0


def dead_letter_copy(message: AbstractIncomingMessage, queue: str, reason: str, now: datetime,
                     body: bytes | None = None, message_id: str | None = None, user_id: str | None = None,
                     refused_publisher: str | None = None) -> aio_pika.Message:
    """A persistent copy of `message` (same body, message id and properties, unless `body` / `message_id` say
    otherwise) with the death headers, published as `user_id` (the dead-lettering service's own user: RabbitMQ
    refuses any other; the original's is in the reason where it matters, and in `refused_publisher`)."""
    return aio_pika.Message(
        message.body if body is None else body,
        headers=death_headers(message.headers, queue, reason, now, refused_publisher),
        content_type=message.content_type, content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT, correlation_id=message.correlation_id,
        message_id=message.message_id if message_id is None else message_id, timestamp=message.timestamp,
        type=message.type, app_id=message.app_id, user_id=user_id)


def entry_id(message_id: str | None, index: int) -> str:
    """The message id of the dead letter of entry `index` of the message `message_id` ("1201+19#3")."""
    return f"{message_id}#{index}"


async def dead_letter(message: AbstractIncomingMessage, queue: str, reason: str, channel: AbstractChannel | NodeChannel,
                      user_id: str | None = None, refused_publisher: str | None = None,
                      requeue_pause: float = REQUEUE_PAUSE) -> bool:
    """Move `message`, consumed from `queue`, to `<queue>.dead` with `reason`: a copy published on `channel`
    (confirms on, `on_return_raises`) as `user_id`, then the ack of the original. `refused_publisher`: the
    `user_id` the message came with ("" for none) when that is why it is refused. `requeue_pause`: seconds
    before the original is requeued when its copy was not stored.

    Returns True if it was moved; False if the copy was not confirmed and the original was requeued instead.
    Never raises for a broker failure: a message left unacknowledged comes back when its channel is replaced."""
    copy = dead_letter_copy(message, queue, reason, utc_now(), user_id=user_id, refused_publisher=refused_publisher)
    return await _store(message, queue, [copy], channel, True, requeue_pause)


async def dead_letter_entries(message: AbstractIncomingMessage, queue: str, refused: Sequence[tuple[int, str, str]],
                              channel: AbstractChannel | NodeChannel, user_id: str | None = None,
                              requeue_pause: float = REQUEUE_PAUSE) -> bool:
    """Send each refused entry of `message` (a message of several entries, consumed from `queue`) to
    `<queue>.dead` on its own: `refused` lists (entry index, its JSON text, reason), and each dead letter
    carries that text alone as its body, under the id `entry_id(...)`, with the message's properties and
    headers and the death headers, published as `user_id`. The original is not acked here: its other entries
    were processed, and it is acked with its batch.

    Returns True if every copy was confirmed; False if one was not and the original was requeued instead (its
    entries come again: the processed ones are deduplicated downstream, the refused ones dead-lettered again)."""
    now = utc_now()
    copies = [dead_letter_copy(message, queue, reason, now, text.encode(), entry_id(message.message_id, index),
                               user_id) for index, text, reason in refused]
    return await _store(message, queue, copies, channel, False, requeue_pause)


async def _store(message: AbstractIncomingMessage, queue: str, copies: Sequence[aio_pika.Message],
                 channel: AbstractChannel | NodeChannel, ack: bool, requeue_pause: float) -> bool:
    try:
        with cancelled_means_gone("the dead letters' channel"):
            for copy in copies:
                # Raises unless the broker confirmed it: a nack, an unroutable return (no such queue), a timeout.
                await channel.default_exchange.publish(copy, routing_key=dead_letter_queue(queue), mandatory=True,
                                                       timeout=CONFIRM_TIMEOUT)
            if ack:
                await message.ack()
        return True
    except Exception as exc:  # noqa: BLE001 - whatever failed, the original must stay in the broker
        logger.warning("message %s from %s not dead-lettered (%r); requeued", message.message_id, queue, exc)
        await asyncio.sleep(requeue_pause)
        try:
            with cancelled_means_gone("the consumer's channel"):
                await message.nack(requeue=True)
        except Exception as nack_exc:  # noqa: BLE001 - a dead channel redelivers the message by itself
            logger.warning("could not requeue message %s: %r", message.message_id, nack_exc)
        return False
