"""The LISTEN connection of an Order Service process: one dedicated connection to the primary (apart from the
pools), on which PostgreSQL delivers the notifications of final orders (`repo.FINALIZE_ORDERS`) that wake the
process's waiters, whichever replica applied the result.

A lost connection is noticed within seconds, even when the server falls silent (a partition: no reset ever
comes; a hung host whose kernel still answers): the TCP keepalives and `tcp_user_timeout` every DSN of the service
gets (`common.db.pg_hosts.with_timeouts`, from the hosts it is given), and a probe
every `PROBE_INTERVAL` seconds that must answer within `PROBE_TIMEOUT`. Then the listener connects again, to the
primary of the moment (`common.db.pg_hosts`: after a failover, the new one), LISTENs, and only then calls
`on_listening`, which reads the waited-for orders again: whatever became final while nobody listened."""
import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiopg

from common.db.pg_hosts import Hosts, WrongHost, describe, read_only
from common.domain.errors import Unavailable
from common.observability.metrics import LISTEN_CONNECTS, LISTENING, NOTIFICATIONS
from common.runtime.endpoints import reason
from common.runtime.retry import DB_ERRORS
from common.runtime.stopping import cancel

logger = logging.getLogger(__name__)

PROBE_INTERVAL = 2.0
PROBE_TIMEOUT = 3.0
RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0)  # seconds before each new attempt; the last one repeats


class Listener:
    """LISTENs on `channel` for as long as it runs; `on_notify(payload)` gets each notification, in order."""

    def __init__(self, hosts: Hosts, channel: str, on_notify: Callable[[str], Awaitable[None]],
                 on_listening: Callable[[], Awaitable[None]]) -> None:
        self.hosts, self.channel = hosts, channel
        self.on_notify, self.on_listening = on_notify, on_listening
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"LISTEN {self.channel}")

    async def stop(self) -> None:
        await cancel(self._task, 5, f"LISTEN {self.channel}")

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen()
            except (*DB_ERRORS, Unavailable) as exc:
                if not failures:
                    logger.warning("LISTEN %s connection lost, listening again: %s", self.channel, reason(exc))
                failures += 1
            except Exception:  # a bug (logged with its traceback) must not end the wake-ups for good
                logger.exception("LISTEN %s failed; listening again", self.channel)
                failures += 1
            else:
                failures = 0
            finally:
                LISTENING.set(0)
            await asyncio.sleep(RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS)) - 1] if failures else 0)

    async def _listen(self) -> None:
        dsn = await self.hosts.primary()
        async with aiopg.connect(dsn, timeout=PROBE_TIMEOUT, enable_hstore=False,
                                 enable_json=False, enable_uuid=False) as conn:
            async with conn.cursor() as cur:
                await cur.execute(f"LISTEN {self.channel}")
            LISTEN_CONNECTS.inc()
            LISTENING.set(1)
            logger.info("LISTEN %s on %s", self.channel, describe(dsn))
            await self.on_listening()
            await self._receive(conn)

    async def _receive(self, conn: aiopg.Connection) -> None:
        """Hand each notification on, and probe the connection every `PROBE_INTERVAL` s; raises when it is lost."""
        loop = asyncio.get_running_loop()
        probe_at = loop.time() + PROBE_INTERVAL
        while True:
            try:
                notify = await asyncio.wait_for(conn.notifies.get(), max(probe_at - loop.time(), 0))
            except TimeoutError:
                await self._probe(conn)
                probe_at = loop.time() + PROBE_INTERVAL
                continue
            NOTIFICATIONS.inc()
            await self.on_notify(notify.payload)

    async def _probe(self, conn: aiopg.Connection) -> None:
        """Raises `asyncio.TimeoutError` (aiopg closes the connection) if the server does not answer within the
        connection's timeout, `PROBE_TIMEOUT`; `WrongHost` if it is no longer a primary (a multi-host DSN)."""
        if self.hosts.several:
            if await read_only(conn):
                raise WrongHost("the LISTEN connection's server is now a standby")
            return
        async with conn.cursor() as cur:
            await cur.execute("SELECT 1")
