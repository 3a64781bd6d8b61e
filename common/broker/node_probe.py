"""Whether the RabbitMQ node a connection uses can still commit, asked every few seconds.

A node cut off from the cluster's majority keeps answering its clients' heartbeats while it can commit nothing: a
quorum queue confirms a publish only once a majority of its members holds it. A publisher notices by its confirms
timing out, but a consumer's connection receives nothing and cannot tell that from a quiet queue, and a service
with nothing to publish (the Payments Service, when no order request reaches it) notices nothing at all: measured,
a cut of the services' node from the other two cost the whole cut. So each connection publishes an empty message
to a queue of its own kind (`PROBE_QUEUE`, one message long, never consumed) every `PROBE_INTERVAL` seconds and
leaves the node (`NodeConnection.move_on`) after `LEAVE_AFTER_MISSES` probes in a row are not confirmed within
`PROBE_TIMEOUT`."""
import asyncio
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection
from aio_pika.exceptions import DeliveryError
from aiormq.exceptions import ChannelPreconditionFailed

from common.broker import queues
from common.broker.amqp_nodes import NodeChannel, NodeConnection
from common.runtime.retry import BROKER_ERRORS
from common.runtime.stopping import cancelled_means_gone
from common.runtime.worker import BgWorker

PROBE_QUEUE = "node_probe"
PROBE_INTERVAL = 2.0
# As the publisher's: a node whose probes are not confirmed for three timeouts (15 s) is left. Not fewer: when
# another node is cut off, the probe queue's leader may have been on it, and a healthy node confirms nothing until
# the majority elects a new one (up to ~9 s measured for the services' queues).
PROBE_TIMEOUT = 5.0
LEAVE_AFTER_MISSES = 3


def probe_arguments(queue_type: str) -> dict[str, Any]:
    """One message long: each probe replaces the one before (the default overflow drops the oldest)."""
    arguments: dict[str, Any] = {"x-max-length": 1}
    if queue_type == "quorum":
        arguments["x-queue-type"] = "quorum"
    return arguments


class NodeProbe:
    """Probes `connection`'s node on a confirming channel of its own; `start()`, then `stop()`."""

    def __init__(self, connection: NodeConnection, channel: NodeChannel) -> None:
        self.connection, self.channel = connection, channel
        self.misses = 0  # probes in a row not confirmed in time, on the connection `_probed`
        self._probed: AbstractConnection | None = None
        self._worker = BgWorker(f"probe of RabbitMQ node {connection}", self.probe, PROBE_INTERVAL)

    @classmethod
    async def open(cls, connection: NodeConnection, queue_type: str) -> "NodeProbe":
        """Declare `PROBE_QUEUE` (of `queue_type`) through a new channel of `connection`.

        Raises `queues.QueueMismatch` if it exists with another type."""
        channel = await connection.channel(publisher_confirms=True)
        try:
            await channel.declare_queue(PROBE_QUEUE, durable=True, arguments=probe_arguments(queue_type))
        except ChannelPreconditionFailed as exc:
            raise queues.mismatch(PROBE_QUEUE, queue_type, exc) from None
        return cls(connection, channel)

    def start(self) -> None:
        self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    async def probe(self) -> bool:
        """One probe; True to send the next at once (one was missed, and the node is not left yet)."""
        connection = self.connection.connection
        if connection is None:
            return False  # being made again: the connection's own loop is on it
        if connection is not self._probed:
            self._probed, self.misses = connection, 0
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                with cancelled_means_gone("the probe's channel awaiting the broker's answer"):
                    await self.channel.default_exchange.publish(aio_pika.Message(b""), routing_key=PROBE_QUEUE,
                                                                mandatory=False)
        except TimeoutError:
            self.misses += 1
            if self.misses < LEAVE_AFTER_MISSES:
                return True
            reason = f"{self.misses} probes in a row not confirmed within {PROBE_TIMEOUT} s"
            if self.connection.connection is connection and self.connection.move_on(reason):
                self.misses = 0
            return False
        except (*BROKER_ERRORS, DeliveryError):
            return False  # the connection is going: a new one starts its own count
        self.misses = 0
        return False
