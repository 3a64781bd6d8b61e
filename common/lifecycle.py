"""Process start-up and graceful shutdown shared by the three services."""
import asyncio
import logging
import signal

import uvloop
from tornado.httpserver import HTTPServer

from common.config import load_settings
from common.envelope import BaseHandler
from common.logs import setup_logging

# Tornado rejects bodies above this outright; handlers enforce the smaller MAX_BODY_BYTES with a JSON 413.
SERVER_MAX_BODY = 10 * 1024 * 1024


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


async def stop_server(server, grace=10.0):
    """Stop accepting, give in-flight requests up to `grace` seconds to finish, then close all connections
    (Tornado's `close_all_connections` alone would cut requests off mid-way)."""
    server.stop()
    # Clients on kept-alive connections get at most one more answer, marked `Connection: close`.
    server.conn_params.no_keep_alive = True
    deadline = asyncio.get_running_loop().time() + grace
    while BaseHandler.in_flight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    await server.close_all_connections()


def run(service_class):
    """Entry point of a service process: start, serve until SIGTERM/SIGINT, stop gracefully."""
    settings = load_settings()
    setup_logging(settings, service_class.name)

    async def main():
        service = service_class(settings)
        await service.start()
        await wait_for_shutdown()
        logger = logging.getLogger(service_class.name)
        logger.info("shutting down")
        started = asyncio.get_running_loop().time()
        await service.stop()
        logger.info("stopped in %.2fs", asyncio.get_running_loop().time() - started)

    if settings.event_loop == "uvloop" and getattr(service_class, "uvloop_safe", False):
        # libuv's loop: fewer CPU cycles per callback and per socket operation than asyncio's own
        # (bench figure 4 measures the gateway on both). Only where declared safe: with aiopg, uvloop
        # fails to watch a new connection whose file descriptor number an old one used (RuntimeError
        # "UVPoll closed", seen in tests/e2e/test_reconnect.py), so the services keep asyncio's loop.
        uvloop.run(main())
    else:
        asyncio.run(main())
