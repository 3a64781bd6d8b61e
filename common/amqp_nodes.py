"""A robust AMQP connection to one node of a RabbitMQ cluster at a time, moving to the next node when it loses it.

aio-pika 10's robust connection reconnects to the single URL it was made with (multi-host support exists only
in its repository, not in a release). `connect_robust` takes a `connection_class`, its documented hook: the
subclass here keeps aio-pika's reconnect loop, channel and consumer restoration, and only chooses which node
each attempt goes to. Publishes left unconfirmed by a node that died fail in the caller (`DeliveryError`,
`ChannelInvalidStateError`, a timeout); the outbox relay sends them again, as after any broker outage.
"""
import functools
import logging

import aio_pika
from aio_pika import RobustConnection
from yarl import URL

from common.config import ConfigurationError

logger = logging.getLogger(__name__)

# Seconds a connection attempt to one node may take: a machine that is gone does not refuse, it stays silent,
# and every second spent on it is a second the service has no broker. Generous for a loaded node's handshake.
CONNECT_TIMEOUT = 5
# Seconds between two connection attempts (each to the next node). Short: recovery within a second or two.
RECONNECT_INTERVAL = 1


def split_urls(value):
    """The node URLs of a `RABBITMQ_URL` setting: one URL, or several comma-separated full URLs.

    Raises `ConfigurationError` if there is none or one is not an amqp(s):// URL with a host."""
    urls = [part.strip() for part in value.split(",") if part.strip()]
    if not urls:
        raise ConfigurationError("RABBITMQ_URL names no node")
    for url in urls:
        parsed = URL(url)
        if parsed.scheme not in ("amqp", "amqps") or not parsed.host:
            raise ConfigurationError(f"RABBITMQ_URL entry {parsed.with_password(None)!s} is not an amqp:// URL "
                                     "with a host")
    return urls


class MultiNodeConnection(RobustConnection):
    """A `RobustConnection` over `nodes` (URLs of one cluster's nodes, tried in that order, from `first`).

    Each connection attempt after the first goes to the node after the previous attempt's: after losing its
    node the connection tries the next one, and a node that refuses costs one `reconnect_interval` before
    the next is tried, so with one node of three down a reconnect takes at most two attempts."""

    def __init__(self, url, *, nodes, first=0, **kwargs):
        self.nodes = [URL(node) for node in nodes]
        self.node_index = first
        self._attempts = None  # not counting yet: Connection.__init__ clears `transport` too
        super().__init__(self.nodes[first], **kwargs)
        self._attempts = 0

    @property
    def node(self):
        """The URL of the node this connection uses (or is trying)."""
        return self.nodes[self.node_index]

    # aio-pika's reconnect loop (RobustConnection.__connect_transport) clears `transport` right before each
    # connection attempt, which then connects to `self.url`: the one per-attempt step it exposes, so the node
    # is chosen here. Connection.__init__ and close() clear it too; neither is followed by an attempt.
    @property
    def transport(self):
        return self._transport

    @transport.setter
    def transport(self, value):
        if value is None and self._attempts is not None and not self._close_called:
            if self._attempts:
                self.node_index = (self.node_index + 1) % len(self.nodes)
                self.url = self.node
            self._attempts += 1
        self._transport = value

    async def _on_connected(self):
        # `connection_attempt` counts the connections made before this one: a reconnect is worth seeing.
        reconnect = self.connection_attempt > 0
        await super()._on_connected()
        logger.log(logging.WARNING if reconnect else logging.INFO, "%s to RabbitMQ node %s",
                   "reconnected" if reconnect else "connected", self)


async def connect_robust(urls, first=0):
    """Connect to the first reachable node of `urls`, trying them in turn from `urls[first]`; the connection
    then moves between them by itself (`MultiNodeConnection`).

    Raises the last node's connection error (e.g. `AMQPConnectionError`) if none of them answers."""
    error = None
    for offset in range(len(urls)):
        index = (first + offset) % len(urls)
        factory = functools.partial(MultiNodeConnection, nodes=urls, first=index)
        try:
            return await aio_pika.connect_robust(urls[index], connection_class=factory, timeout=CONNECT_TIMEOUT,
                                                 reconnect_interval=RECONNECT_INTERVAL)
        except Exception as exc:  # noqa: BLE001 - the next node may answer; the last error is raised below
            logger.warning("RabbitMQ node %s: %r", URL(urls[index]).with_password("******"), exc)
            error = exc
    raise error
