"""The operators' side: the dead letters of one queue, taken out of `<queue>.dead` and held unacked while a
command looks at them, then acked (replayed, purged) or handed back by closing the connection.

Held, not consumed: a message leaves the dead-letter queue only when it is acked, and it is acked only after
what replaces it is confirmed, so a crash or a broken connection at any point puts every held message back.

A replayed message is published as the user this connection logged in as (its `user_id`): the consumers take
it only if that is the user they take the queue's messages from or `BROKER_OPERATOR_USER`. Operators run the
command with that operator user's credentials (the services' own users may not read `.dead` queues)."""
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue
from aio_pika.exceptions import ChannelNotFoundEntity
from aiormq.exceptions import ChannelAccessRefused

from common.broker.dead_letter_headers import DeadLetterInfo, dead_letter_queue, replay_headers, utc_now
from common.broker.urls import node_urls
from common.runtime.config import broker_user
from common.runtime.endpoints import amqp_port
from common.runtime.retry import BROKER_ERRORS

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
CONFIRM_TIMEOUT = 10.0


class UnknownQueue(Exception):
    """The queue or its dead-letter queue does not exist."""


class Unreachable(Exception):
    """No node of the RabbitMQ URL list answered."""


class AccessRefused(Exception):
    """The user may not read the dead-letter queue (a service's own user: operators use BROKER_OPERATOR_USER's)."""


def without_password(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{amqp_port(parts)}{parts.path}"


async def connect_first(rabbitmq_url: str) -> AbstractConnection:
    """A connection to the first node of the list that answers; raises `Unreachable` naming each one tried."""
    failures: list[str] = []
    for url in node_urls(rabbitmq_url):
        try:
            return await aio_pika.connect(url, timeout=CONNECT_TIMEOUT)
        except BROKER_ERRORS as exc:
            failures.append(f"{without_password(url)} ({exc!r})")
    raise Unreachable("RabbitMQ unreachable: " + "; ".join(failures or ["RABBITMQ_URL is empty"]))


@dataclass
class DeadLetter:
    message: AbstractIncomingMessage
    info: DeadLetterInfo

    @property
    def id(self) -> str | None:
        return self.message.message_id


class DeadLetterQueue:
    """The dead letters of `queue`, from a connection this object owns (`close` hands back what is held)."""

    def __init__(self, connection: AbstractConnection, channel: AbstractChannel, queue: str, dead: AbstractQueue,
                 user: str) -> None:
        self.connection, self.channel, self.queue, self.dead = connection, channel, queue, dead
        self.user = user  # the user it logged in as

    @classmethod
    async def open(cls, rabbitmq_url: str, queue: str) -> "DeadLetterQueue":
        """Raises `Unreachable`, or `UnknownQueue` if `queue` or `<queue>.dead` does not exist."""
        connection = await connect_first(rabbitmq_url)
        try:
            for name in (queue, dead_letter_queue(queue)):
                await _must_exist(connection, name)
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            dead = await channel.declare_queue(dead_letter_queue(queue), passive=True)
        except BaseException:
            await connection.close()
            raise
        return cls(connection, channel, queue, dead, broker_user(rabbitmq_url))  # every node's URL has one user

    async def take_all(self) -> list[DeadLetter]:
        """Every message in the dead-letter queue now, held unacked, oldest first. Raises `AccessRefused` if
        this user may not read it."""
        held: list[DeadLetter] = []
        try:
            while (message := await self.dead.get(no_ack=False, fail=False)) is not None:
                held.append(DeadLetter(message, DeadLetterInfo.from_headers(message.headers, self.queue)))
        except ChannelAccessRefused:
            raise AccessRefused(f"RabbitMQ refuses user {self.user} to read {dead_letter_queue(self.queue)}: run the "
                                "command with the operator user's credentials (BROKER_OPERATOR_USER)") from None
        return held

    async def replay(self, letter: DeadLetter) -> None:
        """Publish `letter` to its queue with its message id, body and properties, as this connection's user
        (`user_id`), confirmed; then ack it in the dead-letter queue. Raises (leaving it held, so it goes back)
        if the broker did not confirm."""
        message = letter.message
        again = aio_pika.Message(
            message.body, headers=replay_headers(message.headers, utc_now()), content_type=message.content_type,
            content_encoding=message.content_encoding, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=message.correlation_id, message_id=message.message_id, timestamp=message.timestamp,
            type=message.type, app_id=message.app_id, user_id=self.user)
        await self.channel.default_exchange.publish(again, routing_key=self.queue, mandatory=True,
                                                    timeout=CONFIRM_TIMEOUT)
        await message.ack()

    async def remove(self, letter: DeadLetter) -> None:
        await letter.message.ack()

    async def close(self) -> None:
        """Hand back every message still held: the broker requeues unacked messages of a closed channel."""
        await self.connection.close()


async def _must_exist(connection: AbstractConnection, name: str) -> None:
    # A passive declare of a missing queue closes its channel, hence a channel of its own.
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, passive=True)
    except ChannelNotFoundEntity:
        raise UnknownQueue(f"no queue {name!r} on this RabbitMQ vhost") from None
    finally:
        if not channel.is_closed:
            await channel.close()
