"""The process of each of the three services: its entry point (`run`), start-up (for the two backends: connect,
`bootstrap` the parts, serve, run the workers, consume) and graceful shutdown."""
import asyncio
import logging
import signal
import sys
from typing import ClassVar

import uvloop

from common.broker.connection import Broker
from common.broker.urls import with_heartbeat
from common.db.database import Database
from common.observability import tracing
from common.runtime.config import ConfigurationError, Settings, load_settings
from common.runtime.logs import setup_logging
from common.runtime.stopping import within
from common.runtime.wiring import Wiring, Worker
from common.web.auth import Authenticator
from common.web.http_server import DrainingHTTPServer, listen, stop_server

logger = logging.getLogger(__name__)

# Seconds a graceful shutdown may take in all (requests in flight get up to 8 of them).
SHUTDOWN_TIMEOUT = 20


async def wait_for_shutdown() -> None:
    """Return when SIGTERM or SIGINT arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


class Service:
    """A process `run` starts and stops: its HTTP server and, for the two services, their database pool,
    broker connection and background workers, stopped in that order (each stage bounded on its own)."""
    name: ClassVar[str]
    uvloop_safe: ClassVar[bool] = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: DrainingHTTPServer | None = None
        self.admin_server: DrainingHTTPServer | None = None
        self.workers: list[Worker] = []
        self.broker: Broker | None = None
        self.db: Database | None = None
        self.auth: Authenticator | None = None

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        """Each stage bounded (`within`, a little above the bounds inside it): a stage that overruns is left
        behind, logged with its stack, and the next one runs."""
        if self.server:
            await within(12, "draining the HTTP server", stop_server(self.server))
        if self.workers:
            await within(8, "stopping the workers", asyncio.gather(*(worker.stop() for worker in self.workers)))
        if self.broker:
            await within(16, "closing the broker", self.broker.close())
        if self.db:
            await within(7, "closing the database pools", self.db.close())
        if self.auth:
            await within(3, "stopping the authenticator", self.auth.stop())
        # Last: probes and scrapes see the process until it is gone.
        if self.admin_server:
            self.admin_server.stop()
            await within(3, "closing the admin connections", self.admin_server.close_all_connections())


class BackendService(Service):
    """The Order or Payments Service: connect to its database and the broker, `bootstrap` the parts from
    them, then serve, run the workers and consume."""
    dsn_setting: ClassVar[str]
    port_setting: ClassVar[str]
    admin_port_setting: ClassVar[str]
    wiring: Wiring | None = None
    port: int

    @staticmethod
    def bootstrap(settings: Settings, db: Database, broker: Broker, auth: Authenticator) -> Wiring:
        raise NotImplementedError

    async def start(self) -> None:
        settings = self.settings
        self.port = getattr(settings, self.port_setting)
        db = self.db = await Database.connect(getattr(settings, self.dsn_setting), self.name, settings.db_pool_size,
                                              settings.db_timeouts)
        broker = self.broker = await Broker.connect(with_heartbeat(settings.rabbitmq_url, settings.rabbitmq_heartbeat),
                                           settings.prefetch, queue_type=settings.queue_type,
                                           entries_per_message=settings.entries_per_message)
        auth = self.auth = Authenticator(settings.auth)
        auth.start()
        wiring = self.wiring = self.bootstrap(settings, db, broker, auth)
        for step in wiring.startup:
            await step()
        self.admin_server = listen(wiring.admin_app, getattr(settings, self.admin_port_setting),
                                   settings.admin_listen_address, settings)
        self.server = listen(wiring.app, self.port, settings.listen_address, settings)
        self.port = self.server.port
        self.workers = list(wiring.workers.values())
        for worker in self.workers:
            worker.start()
        for consumption in wiring.consumers:
            await broker.consumer.consume(consumption.queue, consumption.kind, consumption.handle_batch,
                                          settings.batch_size, consumption.publishers,
                                          consumption.probe, settings.consumer_step_aside_after)
        logger.info("%s listening on %s:%s, admin on %s:%s", self.name, settings.listen_address, self.port,
                    settings.admin_listen_address, self.admin_server.port)

    async def stop(self) -> None:
        for let_go in self.wiring.draining if self.wiring else ():
            let_go()
        await super().stop()


def run(service_class: type[Service]) -> None:
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

    async def main() -> None:
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
