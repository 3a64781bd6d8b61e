"""A robust AMQP connection to one node of a RabbitMQ cluster at a time, moving to the next node when it loses it.

aio-pika 10's robust connection reconnects to the single URL it was made with (multi-host support exists only
in its repository, not in a release). `connect_robust` takes a `connection_class`, its documented hook: the
subclass here keeps aio-pika's reconnect loop, channel and consumer restoration, and only chooses which node
each attempt goes to. Publishes left unconfirmed by a node that died fail in the caller (`DeliveryError`,
`ChannelInvalidStateError`, a timeout); the outbox relay sends them again, as after any broker outage.

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
import functools
import logging
import os
import ssl

import aio_pika
from aio_pika import RobustConnection
from yarl import URL

from common.runtime.config import ConfigurationError

logger = logging.getLogger(__name__)

# Seconds a connection attempt to one node may take: a machine that is gone does not refuse, it stays silent,
# and every second spent on it is a second the service has no broker. Generous for a loaded node's handshake.
CONNECT_TIMEOUT = 5
# Seconds between two connection attempts (each to the next node). Short: recovery within a second or two.
RECONNECT_INTERVAL = 1


# aiormq 7.2.4's TLS query parameters (aiormq.connection.Connection.__init__), and those naming files.
TLS_PARAMETERS = ("cafile", "capath", "cadata", "certfile", "keyfile", "no_verify_ssl")
TLS_FILES = ("cafile", "certfile", "keyfile")
_warned_unverified = set()


class TlsRefused(ConfigurationError):
    """TLS to RabbitMQ cannot work with this URL (a certificate no configured CA vouches for, one for another
    host name, a node that does not speak TLS on that port): a setting must change, retrying cannot help."""


def split_urls(value):
    """The node URLs of a `RABBITMQ_URL` setting: one URL, or several comma-separated full URLs.

    Raises `ConfigurationError` if there is none, if one is not an amqp(s):// URL with a host, if its TLS
    parameters cannot work (`check_tls`), or if they name different users (the connection moves between the
    nodes as one user, the one its messages' `user_id` names)."""
    urls = [part.strip() for part in value.split(",") if part.strip()]
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


def check_tls(url):
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


def tls_refusal(exc):
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

    Raises the last node's connection error (e.g. `AMQPConnectionError`) if none of them answers, or `TlsRefused`
    if none answers and TLS failed on one of them (`tls_refusal`)."""
    error, tls = None, []
    for offset in range(len(urls)):
        index = (first + offset) % len(urls)
        factory = functools.partial(MultiNodeConnection, nodes=urls, first=index)
        node = URL(urls[index]).with_password("******")
        try:
            return await aio_pika.connect_robust(urls[index], connection_class=factory, timeout=CONNECT_TIMEOUT,
                                                 reconnect_interval=RECONNECT_INTERVAL)
        except Exception as exc:  # noqa: BLE001 - the next node may answer; the last error is raised below
            logger.warning("RabbitMQ node %s: %r", node, exc)
            error = exc
            why = tls_refusal(exc)
            if why is not None:
                tls.append(f"{node.host}:{node.port}: {why}")
    if tls:
        ca = URL(urls[first]).query.get("cafile") or "the system's CAs"
        raise TlsRefused(f"RabbitMQ: TLS failed: {'; '.join(tls)} (CA: {ca}); not retrying, the TLS settings or "
                         "the node's certificate must change") from error
    raise error
