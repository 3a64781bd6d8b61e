"""An AMQP connection to one node of a RabbitMQ cluster at a time, moving to the next node when it loses it or is
told to leave it (`NodeConnection.move_on`: a publisher whose node stops confirming).

aio-pika 10's robust connection reconnects to the single URL it was made with (multi-host support exists only
in its repository, not in a release), and offers no public way to choose the node of each attempt. So the
reconnect loop is this module's own, over `aio_pika.connect` to one node per attempt; its channels
(`NodeChannel`) are opened again on each new connection with their QoS, queue declarations and consumers, as
aio-pika's robust channels would be. Publishes left unconfirmed by a node that died fail in the caller
(`DeliveryError`, `ChannelInvalidStateError`, a timeout); the outbox relay sends them again, as after any
broker outage.

TLS: an `amqps://` URL (port 5671 when it names none) with aiormq's own query parameters, which it turns into
an `ssl.SSLContext` itself (`ssl.create_default_context` with them: the server's certificate and host name
verified), e.g. `amqps://user:pw@rabbit:5671/vhost?cafile=/etc/shop/ca.crt`. `cafile` (or `capath`, or
`cadata`: base64 DER) names the CA; `certfile` + `keyfile` a client certificate; `no_verify_ssl=1` turns
verification off (warned about). Without a CA parameter the system's CAs verify. aio-pika's own docstring shows
`ca_certs=`, which aiormq 7.2.4 does not read: refused here (`split_urls`), as are TLS parameters on an
`amqp://` URL, which would be ignored. A failed TLS set-up (`tls_refusal`: a certificate no CA vouches for, one
for another host name, a node that does not speak TLS on that port) raises `TlsRefused` rather than being
retried for ever.
"""
import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

import aio_pika
import aiormq.abc
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue, TimeoutType
from aiormq.abc import DeliveredMessage
from pamqp.common import FieldTable
from yarl import URL

from common.broker.urls import node_urls
from common.runtime.config import ConfigurationError
from common.runtime.retry import BROKER_ERRORS
from common.runtime.stopping import cancel, cancelled_means_gone

logger = logging.getLogger(__name__)

# Seconds a connection attempt to one node may take: a machine that is gone does not refuse, it stays silent,
# and every second spent on it is a second the service has no broker. Generous for a loaded node's handshake.
CONNECT_TIMEOUT = 5
# Seconds between two connection attempts (each to the next node). Short: recovery within a second or two.
RECONNECT_INTERVAL = 1
# Seconds before a channel the broker closed alone (a channel error) is opened again: not in a tight loop.
CHANNEL_REOPEN_PAUSE = 1


# aiormq 7.2.4's TLS query parameters (aiormq.connection.Connection.__init__), and those naming files.
TLS_PARAMETERS = ("cafile", "capath", "cadata", "certfile", "keyfile", "no_verify_ssl")
TLS_FILES = ("cafile", "certfile", "keyfile")
_warned_unverified: set[str] = set()


class TlsRefused(ConfigurationError):
    """TLS to RabbitMQ cannot work with this URL (a certificate no configured CA vouches for, one for another
    host name, a node that does not speak TLS on that port): a setting must change, retrying cannot help."""


def split_urls(value: str) -> list[str]:
    """The node URLs of a `RABBITMQ_URL` setting: one URL, or several comma-separated full URLs.

    Raises `ConfigurationError` if there is none, if one is not an amqp(s):// URL with a host, if its TLS
    parameters cannot work (`check_tls`), or if they name different users (the connection moves between the
    nodes as one user, the one its messages' `user_id` names)."""
    urls = node_urls(value)
    if not urls:
        raise ConfigurationError("RABBITMQ_URL names no node")
    for url in urls:
        parsed = URL(url)
        if parsed.scheme not in ("amqp", "amqps") or not parsed.host:
            raise ConfigurationError(f"RABBITMQ_URL entry {parsed.with_password(None)!s} is not an amqp:// URL "
                                     "with a host")
        check_tls(parsed)
    users = sorted({URL(url).user or "guest" for url in urls})
    if len(users) > 1:
        raise ConfigurationError(f"RABBITMQ_URL entries log in as different users ({', '.join(users)}): give every "
                                 "node's URL the same user")
    return urls


def check_tls(url: URL) -> None:
    """Refuse TLS parameters that would be ignored or fail at every attempt: any on an `amqp://` URL (plaintext),
    `ca_certs` (aio-pika's docstring; aiormq reads `cafile`), a file that cannot be read (aiormq's error would
    be a bare `FileNotFoundError` naming no file). Warns once per node when `no_verify_ssl` turns verification off."""
    shown = url.with_password("******" if url.password else None)
    given = [key for key in (*TLS_PARAMETERS, "ca_certs") if key in url.query]
    if url.scheme == "amqp":
        if given:
            raise ConfigurationError(f"RABBITMQ_URL entry {shown} has TLS parameters ({', '.join(given)}) but is "
                                     "amqp://, plaintext: use amqps://")
        return
    if "ca_certs" in url.query:
        raise ConfigurationError(f"RABBITMQ_URL entry {shown}: aiormq does not read ca_certs (it would verify with "
                                 "the system's CAs instead): name the CA with cafile=")
    for key in TLS_FILES:
        if key in url.query and not os.access(url.query[key], os.R_OK):
            raise ConfigurationError(f"RABBITMQ_URL entry {shown}: {key} {url.query[key]} cannot be read")
    if url.query.get("no_verify_ssl", "0") != "0" and str(shown) not in _warned_unverified:
        _warned_unverified.add(str(shown))
        logger.warning("RabbitMQ node %s: no_verify_ssl: its certificate is not verified, anyone on the path can "
                       "pose as it", shown)


def tls_refusal(exc: BaseException | None) -> str | None:
    """Why TLS failed if `exc` (a connection error; aiormq wraps the `ssl` error in `AMQPConnectionError`) is a
    failure no retry mends, else None. A TLS connection cut mid-handshake (`SSLEOFError`, `SSLZeroReturnError`,
    `SSLSyscallError`) is a node going away, not one of them."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {exc.verify_message or exc.reason}"
        if isinstance(exc, ssl.SSLError) and not isinstance(
                exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
            reason = (exc.reason or str(exc)).lower().replace("_", " ")
            return f"TLS handshake failed ({reason}): is it a TLS port?" if "version" in reason else reason
        exc = exc.__cause__ or exc.__context__
    return None


class NodeConnection:
    """A connection to one node of a RabbitMQ cluster at a time (`nodes`: their URLs), kept up by its own loop.

    It connects with `aio_pika.connect` to one node; when that connection is lost, or `move_on` leaves it, the
    next node in the list is tried at once, then the one after it every `RECONNECT_INTERVAL` seconds, round the
    list, until one answers: with one node of three down a reconnect takes at most two attempts. Its channels
    (`NodeChannel`) are opened again on each new connection, with their QoS, queues and consumers. `connected`
    is set while a connection with all its channels is up."""

    def __init__(self, nodes: Sequence[str], first: int = 0) -> None:
        self.nodes = [URL(node) for node in nodes]
        self.node_index = first
        self.connection: AbstractConnection | None = None
        self.connected = asyncio.Event()
        self.reconnect_callbacks: list[Callable[[], object]] = []  # called after each reconnect
        self.channels: list[NodeChannel] = []
        self._lost = asyncio.Event()
        self._closing = False
        self._keeper: asyncio.Task[None] | None = None
        self._closes: set[asyncio.Task[None]] = set()

    @property
    def node(self) -> URL:
        """The URL of the node this connection uses (or used last)."""
        return self.nodes[self.node_index]

    def __str__(self) -> str:
        return str(self.node.with_password("******") if self.node.password else self.node)

    async def connect(self) -> None:
        """Connect to the first node that answers, trying each once from the current one; then keep connected.

        Raises `TlsRefused` if none answers and TLS failed on one of them (`tls_refusal`), else the last node's
        connection error (e.g. `AMQPConnectionError`)."""
        error: Exception | None = None
        tls = []
        for offset in range(len(self.nodes)):
            index = (self.node_index + offset) % len(self.nodes)
            try:
                await self._open(index)
                break
            except Exception as exc:  # noqa: BLE001 - the next node may answer; the last error is raised below
                node = self.nodes[index].with_password("******")
                logger.warning("RabbitMQ node %s: %r", node, exc)
                error = exc
                why = tls_refusal(exc)
                if why is not None:
                    tls.append(f"{node.host}:{node.port}: {why}")
        else:
            if tls:
                ca = self.node.query.get("cafile") or "the system's CAs"
                raise TlsRefused(f"RabbitMQ: TLS failed: {'; '.join(tls)} (CA: {ca}); not retrying, the TLS "
                                 "settings or the node's certificate must change") from error
            assert error is not None  # there is a node: `split_urls` refuses an empty list
            raise error
        logger.info("connected to RabbitMQ node %s", self)
        self._keeper = asyncio.create_task(self._keep_connected(), name=f"RabbitMQ connection to {self}")

    async def channel(self, publisher_confirms: bool = True, on_return_raises: bool = False) -> "NodeChannel":
        """A channel that outlives the node: opened now, and again on every new connection."""
        channel = NodeChannel(self, publisher_confirms=publisher_confirms, on_return_raises=on_return_raises)
        self.channels.append(channel)
        if self.connection is not None:
            await channel.open(self.connection)
        return channel

    async def ready(self) -> AbstractConnection:
        """The connection to the current node, once there is one."""
        while True:
            await self.connected.wait()
            if self.connection is not None:
                return self.connection

    def move_on(self, reason: str) -> bool:
        """Leave the current node for the next one, e.g. a node that stops confirming publishes while its
        connection looks alive (a partition can leave it so until the heartbeat gives up). False if there is no
        connection to leave (one is being made)."""
        if not self.connected.is_set() or self._closing:
            return False
        logger.warning("leaving RabbitMQ node %s: %s", self, reason)
        self._left()
        return True

    async def close(self) -> None:
        self._closing = True
        self.connected.clear()
        for channel in self.channels:
            channel.stop()
        await cancel(self._keeper, CONNECT_TIMEOUT, f"the connection keeper of {self}")
        connection, self.connection = self.connection, None
        if connection is not None:
            await connection.close()
        if self._closes:
            await asyncio.wait(self._closes, timeout=CONNECT_TIMEOUT)

    async def __aenter__(self) -> "NodeConnection":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _open(self, index: int) -> None:
        connection = await aio_pika.connect(self.nodes[index], timeout=CONNECT_TIMEOUT)
        try:
            for channel in self.channels:
                await channel.open(connection)
        except BaseException:
            await asyncio.gather(connection.close(), return_exceptions=True)
            raise
        self.node_index, self.connection = index, connection
        connection.close_callbacks.add(self._on_close)
        self.connected.set()

    def _on_close(self, connection: AbstractConnection | None, exc: BaseException | None = None) -> None:
        if connection is self.connection and not self._closing:
            logger.warning("lost RabbitMQ node %s: %r", self, exc)
            self._left()

    def _left(self) -> None:
        self.connected.clear()
        for channel in self.channels:
            channel.opened.clear()
        self._lost.set()

    async def _keep_connected(self) -> None:
        while True:
            await self._lost.wait()
            self._lost.clear()
            left, self.connection = self.connection, None
            if left is not None:
                # In the background: closing a connection whose peer went silent waits for the heartbeat's grace.
                closing = asyncio.create_task(asyncio.wait_for(left.close(), CONNECT_TIMEOUT))
                self._closes.add(closing)
                closing.add_done_callback(self._closed)
            index = self.node_index
            while True:
                index = (index + 1) % len(self.nodes)
                try:
                    await self._open(index)
                    break
                except Exception as exc:  # noqa: BLE001 - any failure of an attempt: the next node's turn
                    logger.warning("RabbitMQ node %s: %r; trying the next in %ss",
                                   self.nodes[index].with_password("******"), exc, RECONNECT_INTERVAL)
                    await asyncio.sleep(RECONNECT_INTERVAL)
            logger.warning("reconnected to RabbitMQ node %s", self)
            for callback in self.reconnect_callbacks:
                callback()

    def _closed(self, closing: asyncio.Task[None]) -> None:
        self._closes.discard(closing)
        if not closing.cancelled() and closing.exception() is not None:
            logger.info("closing the connection left behind: %r", closing.exception())


OnMessage = Callable[[AbstractIncomingMessage], Awaitable[object]]


class Declare(NamedTuple):
    """A queue declaration, as it is made again on a new channel."""
    durable: bool
    exclusive: bool
    auto_delete: bool
    arguments: FieldTable | None


class Consume(NamedTuple):
    """A consumer (besides its callback), as it is registered again on a new channel."""
    queue: str
    no_ack: bool


class NodeChannel:
    """A channel of a `NodeConnection`, opened again (with its QoS, the queues declared through it and its
    consumers) on each new connection, and after the broker closed it alone (a channel error), once
    `CHANNEL_REOPEN_PAUSE` has passed; a consumer the broker cancels consumes again once its queue is back.
    Publishing waits until it is open: callers bound that wait."""

    def __init__(self, connection: NodeConnection, **options: bool) -> None:
        self.connection = connection
        self.options = options
        self.channel: AbstractChannel | None = None
        self.opened = asyncio.Event()
        self.prefetch: int | None = None
        self.declared: dict[str, Declare] = {}  # the queues declared through it, by name
        self.consumers: dict[OnMessage, Consume] = {}  # by the callback each calls
        self.consumer_tags: dict[str, OnMessage] = {}  # of the open channel: consumer tag -> its callback
        self._reopening: asyncio.Task[None] | None = None
        self._resuming: set[asyncio.Task[None]] = set()

    async def open(self, connection: AbstractConnection) -> None:
        channel = await connection.channel(**self.options)
        if self.prefetch is not None:
            await channel.set_qos(prefetch_count=self.prefetch)
        for name, declare in self.declared.items():
            await channel.declare_queue(name, **declare._asdict())
        tags = {}
        for callback, consume in self.consumers.items():
            queue = await channel.get_queue(consume.queue)
            tags[await queue.consume(callback, no_ack=consume.no_ack)] = callback
        (await channel.get_underlay_channel()).on_consumer_cancel_callbacks.add(self._on_consumer_cancel)
        channel.close_callbacks.add(self._on_close)
        self.channel, self.consumer_tags = channel, tags
        self.opened.set()

    async def consume(self, name: str, callback: OnMessage, no_ack: bool = False) -> str | None:
        """Consume queue `name` on the open channel, and on every channel opened later. None if the connection
        went while the broker was asked: the next channel consumes it, as it does every consumer."""
        channel = await self.ready()
        # Recorded only now: a channel opened while this one waited consumes what is recorded, and this consume
        # would be a second one on it.
        self.consumers[callback] = Consume(name, no_ack)
        try:
            with cancelled_means_gone(f"the channel consuming {name}"):
                tag = await (await channel.get_queue(name, ensure=False)).consume(callback, no_ack=no_ack)
        except BROKER_ERRORS as exc:
            logger.info("the connection went while consuming %s (%r): consumed again on the next channel", name, exc)
            return None
        except BaseException:
            # Refused (no such queue, no access): not to be tried again on every new channel.
            self.consumers.pop(callback, None)
            raise
        self.consumer_tags[tag] = callback
        return tag

    async def cancel(self, callback: OnMessage) -> None:
        """Stop the consumer that calls `callback`, on the open channel and on every later one. Deliveries the
        broker sent before it confirmed the cancel may still reach `callback`."""
        consume = self.consumers.pop(callback, None)
        for tag in [tag for tag, consumer in self.consumer_tags.items() if consumer == callback]:
            del self.consumer_tags[tag]
            channel = self.channel
            if consume is not None and channel is not None and not channel.is_closed:
                try:
                    with cancelled_means_gone(f"the channel consuming {consume.queue}"):
                        await (await channel.get_queue(consume.queue, ensure=False)).cancel(tag)
                except BROKER_ERRORS as exc:  # the consumer went with its channel
                    logger.info("the connection went while cancelling a consumer of %s: %r", consume.queue, exc)

    async def ready(self) -> AbstractChannel:
        """The channel, once open."""
        while True:
            await self.opened.wait()
            if self.channel is not None and not self.channel.is_closed:
                return self.channel
            # Closed a moment ago: its close callback, on its way, has it opened again.
            self.opened.clear()

    @property
    def default_exchange(self) -> "_DefaultExchange":
        return _DefaultExchange(self)

    async def set_qos(self, prefetch_count: int) -> None:
        self.prefetch = prefetch_count
        await (await self.ready()).set_qos(prefetch_count=prefetch_count)

    async def declare_queue(self, name: str, *, durable: bool = False, exclusive: bool = False,
                            auto_delete: bool = False, arguments: FieldTable | None = None,
                            passive: bool = False) -> AbstractQueue:
        """Declare a queue now, and again on every channel opened after this one (a passive declare only now)."""
        declare = Declare(durable, exclusive, auto_delete, arguments)
        queue = await (await self.ready()).declare_queue(name, passive=passive, **declare._asdict())
        if not passive:
            self.declared[name] = declare
        return queue

    async def get_queue(self, name: str, ensure: bool = True) -> "_NodeQueue":
        """The queue `name` (with `ensure`, checked to exist: a passive declare, as aio-pika's)."""
        if ensure:
            await (await self.ready()).get_queue(name)
        return _NodeQueue(self, name)

    async def queue_delete(self, name: str) -> aiormq.spec.Queue.DeleteOk:
        """Delete a queue (as aio-pika's `Channel.queue_delete`); it is declared again on no later channel."""
        self.declared.pop(name, None)
        return await (await self.ready()).queue_delete(name)

    async def get_underlay_channel(self) -> aiormq.abc.AbstractChannel:
        return await (await self.ready()).get_underlay_channel()

    def stop(self) -> None:
        """Open no more: its connection is closing."""
        for task in [self._reopening, *self._resuming]:
            if task is not None:
                task.cancel()

    def _on_consumer_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        # The broker cancelled one of its consumers (its queue was deleted, or its node lost the queue): consume
        # again once the queue is back, as aio-pika's robust channel would.
        callback = self.consumer_tags.pop(frame.consumer_tag or "", None)
        if callback is not None and self.channel is not None:
            task = asyncio.create_task(self._resume(self.channel, callback))
            self._resuming.add(task)
            task.add_done_callback(self._resuming.discard)

    async def _resume(self, channel: AbstractChannel, callback: OnMessage) -> None:
        while self.channel is channel and not channel.is_closed and callback in self.consumers:
            name, no_ack = self.consumers[callback]
            await asyncio.sleep(CHANNEL_REOPEN_PAUSE)
            try:
                # Through a channel of its own: a passive declare of a missing queue closes the channel it is on.
                async with (await self.connection.ready()).channel() as probe:
                    await probe.get_queue(name)
            except Exception as exc:  # noqa: BLE001 - not back yet (or the connection went: it consumes anew)
                logger.info("queue %s not to be consumed again yet: %r", name, exc)
                continue
            if self.channel is channel and not channel.is_closed and callback in self.consumers:
                tag = await (await channel.get_queue(name, ensure=False)).consume(callback, no_ack=no_ack)
                self.consumer_tags[tag] = callback
                logger.warning("consuming %s again after the broker cancelled its consumer", name)
            return

    def _on_close(self, channel: AbstractChannel | None, exc: BaseException | None = None) -> None:
        if channel is None or channel is not self.channel:
            return
        self.opened.clear()
        if self.connection.connected.is_set() and self._reopening is None:
            logger.warning("RabbitMQ closed a channel on %s: %r; reopening it", self.connection, exc)
            self._reopening = asyncio.create_task(self._reopen(channel))

    async def _reopen(self, closed: AbstractChannel) -> None:
        try:
            await asyncio.sleep(CHANNEL_REOPEN_PAUSE)
            connection = self.connection.connection
            # Not if a new connection has opened it meanwhile, or the connection is gone (its reconnect will).
            if self.channel is closed and connection is not None and self.connection.connected.is_set():
                await self.open(connection)
        except Exception as exc:  # noqa: BLE001 - a node that cannot give a channel is no node to stay on
            self.connection.move_on(f"a channel could not be reopened: {exc!r}")
        finally:
            self._reopening = None


class _DefaultExchange:
    """The default exchange of whichever channel a `NodeChannel` has open when a publish is made."""

    def __init__(self, channel: NodeChannel) -> None:
        self.channel = channel

    async def publish(self, message: aio_pika.abc.AbstractMessage, routing_key: str, *, mandatory: bool = True,
                      timeout: TimeoutType = None) -> aiormq.abc.ConfirmationFrameType | DeliveredMessage | None:
        channel = await self.channel.ready()
        return await channel.default_exchange.publish(message, routing_key=routing_key, mandatory=mandatory,
                                                      timeout=timeout)


class _NodeQueue:
    """A queue by name on a `NodeChannel`, used on whichever channel it has open: what it consumes is consumed
    again on every channel opened later."""

    def __init__(self, channel: NodeChannel, name: str) -> None:
        self.channel, self.name = channel, name

    async def consume(self, callback: OnMessage, no_ack: bool = False) -> str | None:
        return await self.channel.consume(self.name, callback, no_ack)

    async def get(self, *, no_ack: bool = False, fail: bool = True,
                  timeout: TimeoutType = 5) -> AbstractIncomingMessage | None:
        """One message, as aio-pika's `Queue.get` (None, rather than an error with `fail`, if there is none)."""
        queue = await self._queue()
        return await (queue.get(no_ack=no_ack, timeout=timeout) if fail else
                      queue.get(no_ack=no_ack, fail=False, timeout=timeout))

    async def _queue(self) -> AbstractQueue:
        return await (await self.channel.ready()).get_queue(self.name, ensure=False)


async def connect_nodes(urls: Sequence[str], first: int = 0) -> NodeConnection:
    """A `NodeConnection` over `urls`, connected to the first of them that answers from `urls[first]` on
    (raises as `NodeConnection.connect`)."""
    connection = NodeConnection(urls, first)
    await connection.connect()
    return connection
