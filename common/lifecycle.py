"""Process start-up and graceful shutdown shared by the three services."""
import asyncio
import logging
import signal
import sys

import uvloop
from tornado.httpserver import HTTPServer

from common.config import ConfigurationError, load_settings
from common.envelope import BaseHandler
from common.logs import setup_logging

logger = logging.getLogger(__name__)

# Tornado rejects bodies above this outright; handlers enforce the smaller MAX_BODY_BYTES with a JSON 413.
SERVER_MAX_BODY = 10 * 1024 * 1024
# Seconds a graceful shutdown may take in all (requests in flight get up to 8 of them).
SHUTDOWN_TIMEOUT = 20


async def wait_for_shutdown():
    """Return when SIGTERM or SIGINT arrives."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def listen(app, port):
    server = HTTPServer(app, max_body_size=SERVER_MAX_BODY, xheaders=True)
    server.listen(port)
    return server


async def stop_server(server, grace=8.0):
    """Stop accepting; close each connection once it is idle, for up to `grace` seconds; then close the rest.

    Tornado's `close_all_connections` alone would cut requests off mid-way: an order committed whose answer
    never leaves, so the client cannot know it exists. A connection is closed only between requests."""
    server.stop()
    # A request read from now on is answered with `Connection: close`, and the connection then closes itself.
    server.conn_params.no_keep_alive = True
    deadline = asyncio.get_running_loop().time() + grace
    # `_connections` is Tornado's own set of open HTTP connections; it offers no public way to list them.
    while server._connections and asyncio.get_running_loop().time() < deadline:
        for connection in list(server._connections):
            if connection.stream not in BaseHandler.busy_streams:
                connection.stream.close()
        await asyncio.sleep(0.01)
    if server._connections:
        logger.warning("%d connections still busy after %ss; closing them", len(server._connections), grace)
    try:
        await asyncio.wait_for(server.close_all_connections(), 3)
    except asyncio.TimeoutError:
        logger.warning("connections did not close within 3 s")


class Service:
    """A process `run` starts and stops: its HTTP server and, for the two services, their database pool,
    broker connection and background workers, stopped in that order (each stage bounded on its own)."""
    name = None
    uvloop_safe = False

    def __init__(self, settings):
        self.settings = settings
        self.server, self.workers, self.broker, self.db = None, [], None, None

    def start_workers(self, *workers):
        self.workers = list(workers)
        for worker in workers:
            worker.start()

    async def stop(self):
        await stop_server(self.server)
        for worker in self.workers:
            await worker.stop()
        if self.broker:
            await self.broker.close()
        if self.db:
            await self.db.close()


def run(service_class):
    """Entry point of a service process: start, serve until SIGTERM/SIGINT, stop gracefully."""
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        sys.exit(f"{service_class.name}: {exc}")
    setup_logging(settings, service_class.name)

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
        logger.info("stopped in %.2fs", asyncio.get_running_loop().time() - started)

    if settings.event_loop == "uvloop" and getattr(service_class, "uvloop_safe", False):
        # libuv's loop: fewer CPU cycles per callback and per socket operation than asyncio's own
        # (bench figure 4 measures the gateway on both). Only where declared safe: with aiopg, uvloop
        # fails to watch a new connection whose file descriptor number an old one used (RuntimeError
        # "UVPoll closed", seen in tests/e2e/test_reconnect.py), so the services keep asyncio's loop.
        uvloop.run(main())
    else:
        asyncio.run(main())
