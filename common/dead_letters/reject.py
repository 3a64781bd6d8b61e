"""Dead-lettering by the consuming service: the message moves to `<queue>.dead` with why and whence attached.

Why the service publishes the copy itself instead of `basic.reject(requeue=False)` into the queue's
dead-letter exchange:
- A reject carries no reason: RabbitMQ's `x-death` says only "rejected", so the reason would live in a log
  line alone. A copy carries it in its headers (`common.dead_letters.headers`).
- RabbitMQ dead-letters without publisher confirms (quorum queues: at most once unless
  `x-dead-letter-strategy: at-least-once`): a rejected message whose dead-lettering fails is gone. Here the
  original is acked only after the broker confirmed the copy; if the copy is not confirmed the original is
  requeued, so it is never lost. A crash between the confirm and the ack leaves a second copy in the
  dead-letter queue (the original comes back and is dead-lettered again): at least once, and a replay of both
  is harmless since the inbox and the order status check deduplicate.
The copy is published on the message's own channel (in confirm mode): if that channel is gone, so is the
delivery, and the broker redelivers the original anyway."""
import asyncio
import logging

import aio_pika
from aiormq import spec

from common.dead_letters.headers import dead_letter_queue, death_headers, utc_now

logger = logging.getLogger(__name__)

CONFIRM_TIMEOUT = 5.0  # seconds; like the services' publish timeout
# Pause before requeueing a message whose copy was not stored: a dead-letter queue that keeps refusing (deleted,
# full with `reject-publish`) would otherwise bounce the message between consumer and broker as fast as they go.
REQUEUE_PAUSE = 1.0


class DeadLetterNotStored(Exception):
    """The broker did not confirm the dead-letter copy (nacked, returned unroutable, or no answer)."""


def dead_letter_copy(message, queue, reason, now):
    """A persistent copy of `message` (same body, message id and properties) with the death headers."""
    return aio_pika.Message(
        message.body, headers=death_headers(message.headers, queue, reason, now),
        content_type=message.content_type, content_encoding=message.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT, correlation_id=message.correlation_id,
        message_id=message.message_id, timestamp=message.timestamp, type=message.type, app_id=message.app_id)


async def dead_letter(message, queue, reason):
    """Move `message`, consumed from `queue`, to `<queue>.dead` with `reason`: confirmed copy, then ack.

    Returns True if it was moved; False if the copy was not confirmed and the original was requeued instead.
    Never raises for a broker failure: a message left unsettled comes back when its channel is replaced."""
    copy = dead_letter_copy(message, queue, reason, utc_now())
    try:
        confirmation = await message.channel.basic_publish(
            copy.body, routing_key=dead_letter_queue(queue), properties=copy.properties, mandatory=True,
            timeout=CONFIRM_TIMEOUT)
        if not isinstance(confirmation, spec.Basic.Ack):
            raise DeadLetterNotStored(f"broker answered {confirmation!r}")
        await message.ack()
        return True
    except Exception as exc:  # noqa: BLE001 - whatever failed, the original must stay in the broker
        logger.warning("message %s from %s not dead-lettered (%r); requeued", message.message_id, queue, exc)
        await asyncio.sleep(REQUEUE_PAUSE)
        try:
            await message.nack(requeue=True)
        except Exception as nack_exc:  # noqa: BLE001 - a dead channel redelivers the message by itself
            logger.warning("could not requeue message %s: %r", message.message_id, nack_exc)
        return False
