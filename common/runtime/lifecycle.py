"""Process start-up and graceful shutdown shared by the three services."""
import asyncio
import logging
import signal
import socket
import sys
import weakref
from dataclasses import dataclass, field

import uvloop
from tornado import httputil, netutil, web

from common.broker.connection import Broker
from common.broker.consumer import HandleBatch
from common.broker.packing import EntryType
from common.db.database import Database
from common.observability import tracing
from common.runtime.config import ConfigurationError, Settings, load_settings
from common.runtime.logs import setup_logging
from common.web.auth import Authenticator
from common.web.http_server import BoundedHTTPServer, server_options

logger = logging.getLogger(__name__)

# Seconds a graceful shutdown may take in all (requests in flight get up to 8 of them).
SHUTDOWN_TIMEOUT = 20


async def wait_for_shutdown():
    """Return when SIGTERM or SIGINT arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


class DrainingHTTPServer(BoundedHTTPServer):
    """An `HTTPServer` that knows which connections have a request in flight, so that a graceful shutdown
    closes only idle ones (`stop_server`).

    A connection is busy from a request's headers until its answer is written: Tornado's connection loop asks
    for the next request (`start_request`) only once the previous answer is out."""

    def initialize(self, *args, **kwargs) -> None:
        super().initialize(*args, **kwargs)
        self.busy: weakref.WeakSet = weakref.WeakSet()

    def start_request(self, server_conn, request_conn) -> httputil.HTTPMessageDelegate:
        self.busy.discard(server_conn)
        return _MarkBusy(self.busy, server_conn, super().start_request(server_conn, request_conn))

    def on_close(self, server_conn) -> None:
        self.busy.discard(server_conn)
        super().on_close(server_conn)


class _MarkBusy(httputil.HTTPMessageDelegate):
    """`delegate`, with its connection marked busy once a request's headers arrive. The other calls go to
    `delegate`'s own methods directly: a body passes through no frame of this wrapper."""

    def __init__(self, busy: weakref.WeakSet, connection, delegate: httputil.HTTPMessageDelegate) -> None:
        self.busy, self.connection, self.delegate = busy, connection, delegate
        self.data_received = delegate.data_received
        self.finish = delegate.finish
        self.on_connection_close = delegate.on_connection_close

    def headers_received(self, start_line, headers):
        self.busy.add(self.connection)
        return self.delegate.headers_received(start_line, headers)


def listen(app, port: int, address: str, settings: Settings, other_files: int = 0) -> DrainingHTTPServer:
    """An HTTP server for `app` (an `Application` or any `HTTPServerConnectionDelegate`) on `address`:`port`
    (port 0: one the kernel picks; `server.port` says which), with the client limits of `settings`
    (`common.web.http_server`; `other_files`: the process's files beside its clients and the usual reserve)."""
    # An accept queue as long as the connections the process may serve (the kernel caps it at somaxconn). Tornado's
    # 128 overflows in a burst of new connections, e.g. 1,000 clients starting to wait at once, each also taking a
    # gateway connection to the Order Service of its own: dropped SYNs are sent again a second later, and all
    # were waiting after 1.8-2.4 s instead of 1.3-1.5 s (3 bursts each, bench.blocking_reads' client).
    sockets = netutil.bind_sockets(port, address, backlog=settings.max_connections)
    server = DrainingHTTPServer(app, **server_options(settings, other_files))
    server.add_sockets(sockets)
    server.port = sockets[0].getsockname()[1]
    return server


def received(stream) -> bool:
    """Whether bytes have come in on `stream` that no request has taken yet (in Tornado's read buffer, whose
    size it keeps in `_read_buffer_size`, or still in the socket)."""
    if stream.closed():
        return False
    if stream._read_buffer_size:
        return True
    try:
        return bool(stream.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError: nothing there
        return False


async def stop_server(server: DrainingHTTPServer, grace: float = 8.0) -> None:
    """Stop accepting; close each connection once it is idle, for up to `grace` seconds; then close the rest.

    Tornado's `close_all_connections` alone would cut requests off mid-way: an order committed whose answer
    never leaves, so the client cannot know it exists. A connection is closed only between requests."""
    server.stop()
    # A request read from now on is answered with `Connection: close`, and the connection then closes itself.
    server.conn_params.no_keep_alive = True
    deadline = asyncio.get_running_loop().time() + grace
    quiet = set()
    # `_connections` is Tornado's own set of open HTTP connections; it offers no public way to list them.
    while server._connections and asyncio.get_running_loop().time() < deadline:
        # Closed only if idle with nothing received at two scans in a row: a request whose bytes have arrived
        # but whose headers Tornado has not handed on yet (the read completed, the coroutine not yet resumed)
        # is on its way to being served, and cutting it would hide its commit behind a reset.
        idle = {connection for connection in server._connections
                if connection not in server.busy and not received(connection.stream)}
        for connection in idle & quiet:
            connection.stream.close()
        quiet = idle
        await asyncio.sleep(0.01)
    if server._connections:
        logger.warning("%d connections still busy after %ss; closing them", len(server._connections), grace)
    try:
        await asyncio.wait_for(server.close_all_connections(), 3)
    except TimeoutError:
        logger.warning("connections did not close within 3 s")


class Service:
    """A process `run` starts and stops: its HTTP server and, for the two services, their database pool,
    broker connection and background workers, stopped in that order (each stage bounded on its own)."""
    name: str = None
    uvloop_safe = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server, self.admin_server, self.workers, self.broker, self.db, self.auth = None, None, [], None, None, None

    async def stop(self) -> None:
        await stop_server(self.server)
        for worker in self.workers:
            await worker.stop()
        if self.broker:
            await self.broker.close()
        if self.db:
            await self.db.close()
        if self.auth:
            await self.auth.stop()
        # Last: probes and scrapes see the process until it is gone.
        if self.admin_server:
            self.admin_server.stop()
            await self.admin_server.close_all_connections()


@dataclass
class Consumption:
    """A queue a service consumes, what it does with each batch (see `common.broker.consumer.BatchConsumer`), and the
    broker users it takes messages from (a message's `user_id`; empty names are left out)."""
    queue: str
    kind: EntryType  # what the entries of its messages are
    handle_batch: HandleBatch
    publishers: tuple[str, ...]


@dataclass
class Wiring:
    """What a service is made of once built from a database and a broker (its `bootstrap`)."""
    app: web.Application
    admin_app: web.Application  # /health, /ready, /metrics, on the admin port
    workers: dict = field(default_factory=dict)  # {role: a BgWorker, or anything with start() and async stop()}
    consumers: list[Consumption] = field(default_factory=list)
    startup: list = field(default_factory=list)  # coroutine functions, awaited before the workers start
    # Called when shutdown begins, before the server drains: what holds requests open (waits) lets them go, so that
    # they are answered within the drain's grace.
    draining: list = field(default_factory=list)


class BackendService(Service):
    """The Order or Payments Service: connect to its database and the broker, `bootstrap` the parts from
    them, then serve, run the workers and consume."""
    dsn_setting: str = None
    port_setting: str = None
    admin_port_setting: str = None
    wiring: Wiring = None

    @staticmethod
    def bootstrap(settings: Settings, db: Database, broker: Broker, auth: Authenticator) -> Wiring:
        raise NotImplementedError

    async def start(self) -> None:
        settings = self.settings
        self.port = getattr(settings, self.port_setting)
        self.db = await Database.connect(getattr(settings, self.dsn_setting), self.name, settings.db_pool_size)
        self.broker = await Broker.connect(settings.rabbitmq_url, settings.prefetch, queue_type=settings.queue_type,
                                           entries_per_message=settings.entries_per_message)
        self.auth = Authenticator(settings.auth)
        self.auth.start()
        self.wiring = self.bootstrap(settings, self.db, self.broker, self.auth)
        for step in self.wiring.startup:
            await step()
        self.admin_server = listen(self.wiring.admin_app, getattr(settings, self.admin_port_setting),
                                   settings.admin_listen_address, settings)
        self.server = listen(self.wiring.app, self.port, settings.listen_address, settings)
        self.port = self.server.port
        self.workers = list(self.wiring.workers.values())
        for worker in self.workers:
            worker.start()
        for consumption in self.wiring.consumers:
            await self.broker.consumer.consume(consumption.queue, consumption.kind, consumption.handle_batch,
                                               settings.batch_size, consumption.publishers)
        logger.info("%s listening on %s:%s, admin on %s:%s", self.name, settings.listen_address, self.port,
                    settings.admin_listen_address, self.admin_server.port)

    async def stop(self) -> None:
        for let_go in self.wiring.draining if self.wiring else ():
            let_go()
        await super().stop()


def run(service_class):
    """Entry point of a service process: start, serve until SIGTERM/SIGINT, stop gracefully."""
    try:
        settings = load_settings()
        otel = dict(settings.otel)
        setup_logging(settings, service_class.name, traced=tracing.enabled_by(otel))
        tracing.start(otel, service_class.name)
    except ConfigurationError as exc:
        sys.exit(f"{service_class.name}: {exc}")
    if settings.auth.mode == "off":
        logger.warning("AUTH_MODE=off: no authentication; anyone who reaches this system may act for any user and "
                       "create money")

    async def main():
        service = service_class(settings)
        try:
            await service.start()
        except ConfigurationError as exc:
            # A setting the broker or database contradicts: restarting cannot help, a traceback neither.
            logging.getLogger(service_class.name).error("not starting: %s", exc)
            sys.exit(2)
        await wait_for_shutdown()
        logger = logging.getLogger(service_class.name)
        logger.info("shutting down")
        started = asyncio.get_running_loop().time()
        stopping = asyncio.create_task(service.stop(), name="service.stop")
        await asyncio.wait([stopping], timeout=SHUTDOWN_TIMEOUT)
        if not stopping.done():
            # Better an exit with the evidence than a process that never ends: the outbox/inbox make
            # whatever was cut off safe to redo. The stacks are taken before anything is cancelled, so
            # the stuck stage is among them.
            for task in asyncio.all_tasks():
                task.print_stack(file=sys.stderr)
            logger.error("shutdown took over %ss; exiting anyway", SHUTDOWN_TIMEOUT)
            sys.exit(1)
        stopping.result()
        tracing.stop()
        logger.info("stopped in %.2fs", asyncio.get_running_loop().time() - started)

    if settings.event_loop == "uvloop" and getattr(service_class, "uvloop_safe", False):
        # libuv's loop: fewer CPU cycles per callback and per socket operation than asyncio's own
        # (bench figure 4 measures the gateway on both). Only where declared safe: with aiopg, uvloop
        # fails to watch a new connection whose file descriptor number an old one used (RuntimeError
        # "UVPoll closed", seen in tests/e2e/test_reconnect.py), so the services keep asyncio's loop.
        uvloop.run(main())
    else:
        asyncio.run(main())
