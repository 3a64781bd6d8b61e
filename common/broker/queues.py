"""The durable queues and their dead-letter queues: classic or quorum, declared with the same arguments by
every service, and a clear start-up error when one already exists with other arguments.

Quorum queues (`QUEUE_TYPE=quorum`) are replicated with Raft over a cluster's nodes: a publish is confirmed
once a majority holds it, so losing one node of three loses no confirmed message. They also count
deliveries, which classic queues cannot: a message that keeps coming back (a consumer that crashes on it) is
dead-lettered after `DELIVERY_LIMIT` deliveries instead of going round forever.
"""
from typing import Any

from aio_pika.abc import AbstractChannel, AbstractQueue
from aiormq.exceptions import ChannelPreconditionFailed

from common.broker.amqp_nodes import NodeChannel
from common.broker.dead_letter_headers import dead_letter_queue
from common.runtime.config import QUEUE_TYPES, ConfigurationError, load_settings

# Deliveries of one message before a quorum queue dead-letters it. A consumer that loses its connection (its
# node died, the process was killed) returns every unacked message, each counting one delivery: the limit
# leaves room for many such faults in a row; a crash-looping message reaches it in minutes. A request
# dead-lettered this way is not lost: its outbox row stays and the relay sends it again.
DELIVERY_LIMIT = 20

MIGRATION = ("The type of an existing queue cannot be changed. To migrate: stop every instance of both "
             "services, save anything wanted from the .dead queues, delete the queues "
             "(rabbitmqctl delete_queue -p VHOST outbox_os; likewise outbox_ps, outbox_os.dead, outbox_ps.dead), "
             "then start the services with the QUEUE_TYPE wanted. Requests and results that were still queued "
             "are sent again by the outbox relays (see docs/high-availability.md, \"RabbitMQ\").")


class QueueMismatch(ConfigurationError):
    """A queue exists with another type or other arguments than this configuration declares."""


def queue_arguments(name: str, queue_type: str) -> dict[str, Any]:
    """The declare arguments of queue `name` (which dead-letters to `name.dead`) of `queue_type`."""
    arguments: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead_letter_queue(name)}
    if queue_type == "quorum":
        arguments.update({
            "x-queue-type": "quorum",
            "x-delivery-limit": DELIVERY_LIMIT,
            # Dead-lettering is at-most-once by default (a message can vanish if the dead-letter queue does
            # not take it); at-least-once keeps it in the source queue until the dead-letter queue confirmed
            # it, and RabbitMQ accepts that strategy only with reject-publish overflow (no length limit is
            # set, so no publish is ever rejected for it).
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        })
    return arguments


def dead_letter_arguments(queue_type: str) -> dict[str, Any] | None:
    return {"x-queue-type": "quorum"} if queue_type == "quorum" else None


async def declare_queue(channel: AbstractChannel | NodeChannel, name: str,
                        queue_type: str | None = None) -> AbstractQueue:
    """Declare `name`, then `name.dead`, both durable, of `queue_type` (None: QUEUE_TYPE of the environment /
    `.env`, for callers without settings such as tests); return the queue `name`.

    Raises `QueueMismatch` (naming the queue and the migration) if one exists with another type or other
    arguments: the broker refuses such a declare with PRECONDITION_FAILED."""
    queue_type = queue_type or load_settings().queue_type
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"queue type {queue_type!r} is not one of {', '.join(QUEUE_TYPES)}")
    dead = dead_letter_queue(name)
    # The queue itself first, so that a mismatch names it rather than its dead-letter queue.
    try:
        queue = await channel.declare_queue(name, durable=True, arguments=queue_arguments(name, queue_type))
    except ChannelPreconditionFailed as exc:
        raise mismatch(name, queue_type, exc) from None
    try:
        await channel.declare_queue(dead, durable=True, arguments=dead_letter_arguments(queue_type))
    except ChannelPreconditionFailed as exc:
        raise mismatch(dead, queue_type, exc) from None
    return queue


def mismatch(name: str, queue_type: str, exc: ChannelPreconditionFailed) -> QueueMismatch:
    return QueueMismatch(f"queue {name} already exists with another type or other arguments than "
                         f"QUEUE_TYPE={queue_type} declares; the broker says: {exc.args[0] if exc.args else exc}. "
                         f"{MIGRATION}")
