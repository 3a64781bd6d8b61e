"""RabbitMQ: the connections, the durable queues (with their dead-letter queues), and one connect that gives a
`Publisher` (with its `PublishWindow`) and a `Consumer`."""
import asyncio
import logging

from aio_pika.abc import AbstractQueue

from common.broker import amqp_nodes, queues
from common.broker.consumer import Consumer
from common.broker.messages import ORDER_REQUESTS, PAYMENT_RESULTS
from common.broker.node_probe import NodeProbe
from common.broker.publisher import Publisher, PublishWindow
from common.observability.metrics import RECONNECTS
from common.runtime.config import broker_user, load_settings
from common.runtime.endpoints import describe_rabbitmq
from common.runtime.retry import BROKER_ERRORS, until_connected
from common.runtime.stopping import cancelled_means_gone, within

logger = logging.getLogger(__name__)



class Broker:
    """Two connections (`amqp_nodes.NodeConnection`): one for a confirming publisher channel, one for a consumer
    channel.

    Apart because RabbitMQ's flow control throttles a connection that publishes faster than the broker
    writes: on a shared connection the consumer's acks would wait behind the publishes, its prefetch window
    would stay full, and consuming would stall for as long as publishing is fast (seen under load: no payment
    result applied for seconds). RabbitMQ's documentation advises the same."""

    def __init__(self, connections: list[amqp_nodes.NodeConnection], publisher: Publisher,
                 consumer: Consumer, probes: list[NodeProbe]) -> None:
        self.connections = connections
        self.publisher = publisher
        self.window = PublishWindow(publisher)
        self.consumer = consumer
        self.probes = probes
        for probe in probes:
            probe.start()

    @classmethod
    async def connect(cls, url: str, prefetch: int, publish_timeout: float = 5.0, queue_type: str | None = None,
                      entries_per_message: int = 1) -> "Broker":
        """Wait for the broker (`url`: one node, or several of one cluster, comma-separated), then declare both
        queues (and their dead-letter queues) of `queue_type` (None: QUEUE_TYPE of the environment). The
        publisher sends up to `entries_per_message` outbox rows in one message.

        Messages are published as the URL's user (their `user_id`, which RabbitMQ checks).

        Raises `QueueMismatch` if one exists with the other type, `amqp_nodes.TlsRefused` at once (no waiting) if
        TLS to the nodes fails in a way only a change of settings mends (`amqps://...?cafile=` naming the wrong
        CA, a certificate for another host name, a port without TLS), `ConfigurationError` for TLS parameters
        that cannot work (`amqp_nodes.check_tls`)."""
        queue_type = queue_type or load_settings().queue_type
        async for attempt in until_connected(BROKER_ERRORS, describe_rabbitmq(url)):
            with attempt:
                broker = await cls._connect_once(url, prefetch, publish_timeout, queue_type, entries_per_message)
        return broker

    @classmethod
    async def _connect_once(cls, url: str, prefetch: int, publish_timeout: float, queue_type: str,
                            entries_per_message: int) -> "Broker":
        """One attempt of `connect`. A connection lost before the queues are declared ends the attempt, closed, as
        one that could not be made: the next attempt starts over on new connections."""
        connections = [await connect(url) for _ in range(2)]
        try:
            with cancelled_means_gone("a connection declaring the queues"):
                publishing = await connections[0].channel(publisher_confirms=True, on_return_raises=True)
                consuming = await connections[1].channel()
                await consuming.set_qos(prefetch_count=prefetch)
                for name in (ORDER_REQUESTS, PAYMENT_RESULTS):
                    await declare_queue(publishing, name, queue_type)
                probes = [await NodeProbe.open(connection, queue_type) for connection in connections]
        except BaseException:
            # Closed cleanly (a mismatch ends the service; a lost connection is made again), so that no half-done
            # channel task is left to die noisily, nor a channel to be opened again on every reconnect.
            await asyncio.gather(*(connection.close() for connection in connections), return_exceptions=True)
            raise
        user = broker_user(url)
        logger.info("connected to RabbitMQ as %s", user)
        # A node that stops confirming is left for the next one as soon as the publisher sees it (its probe would
        # see it too, a few seconds later: common/broker/node_probe.py).
        publisher = Publisher(publishing, publish_timeout, entries_per_message, user_id=user,
                              leave_node=connections[0].move_on)
        return cls(connections, publisher, Consumer(consuming, dead_letters_via=publishing, publish_as=user), probes)

    def is_connected(self) -> bool:
        return all(connection.connected.is_set() for connection in self.connections)

    async def close(self) -> None:
        """Stop consuming and probing, wait for the publishes under way, then close both connections (each step
        bounded)."""
        await self.consumer.stop()
        await asyncio.gather(*(probe.stop() for probe in self.probes))
        await self.window.drain()
        await within(5, "closing the RabbitMQ connections",
                     asyncio.gather(*(connection.close() for connection in self.connections)))


async def connect(url: str) -> amqp_nodes.NodeConnection:
    async for attempt in until_connected(BROKER_ERRORS, describe_rabbitmq(url)):
        with attempt:
            connection = await amqp_nodes.connect_nodes(amqp_nodes.split_urls(url))
    connection.reconnect_callbacks.append(RECONNECTS.inc)
    return connection


async def declare_queue(channel: amqp_nodes.NodeChannel, name: str, queue_type: str | None = None) -> AbstractQueue:
    return await queues.declare_queue(channel, name, queue_type)
