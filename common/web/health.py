"""The admin routes shared by the services: liveness, readiness and the Prometheus metrics."""
import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aio_pika.exceptions import AMQPError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from common.broker.connection import Broker
from common.broker.dead_letter_headers import dead_letter_queue
from common.broker.messages import ORDER_REQUESTS, PAYMENT_RESULTS
from common.db.database import Database
from common.domain.errors import Unavailable
from common.observability.metrics import DEAD_LETTERS, OLDEST_PENDING, PENDING, TASKS, set_ready
from common.runtime.retry import BROKER_ERRORS
from common.web.auth import Authenticator
from common.web.envelope import BaseHandler

logger = logging.getLogger(__name__)


class HealthHandler(BaseHandler):
    def get(self) -> None:
        self.reply(200, "Alive.")


class ServiceReadyHandler(BaseHandler):
    """Ready when PostgreSQL answers, the broker connection is open and the issuer's keys are loaded (without
    them every token is refused)."""
    # Given by `initialize` (`common.web.app.service_admin_application`).
    auth: Authenticator
    db: Database
    broker: Broker

    async def get(self) -> None:
        if not self.auth.ready:
            raise Unavailable("The token issuer's keys are not loaded yet.")
        await self.db.ping()
        if not self.broker.is_connected():
            raise Unavailable("RabbitMQ unreachable.")
        self.reply(200, "Ready.")


class MetricsHandler(BaseHandler):
    """Metrics in Prometheus text format; `backlog(cur)` returns {table: (pending rows, oldest age in s)}.
    A service's scrape also refreshes its readiness and the dead-letter queues' depths (the gateway has none)."""

    # The gateway has none of them.
    db: "Database | None" = None
    backlog: Callable[[Any], Awaitable[dict[str, tuple[int, float]]]] | None = None
    broker: "Broker | None" = None

    async def get(self) -> None:
        if self.backlog:
            database_up = await self._refresh_backlog()
            broker_up = await self._refresh_dead_letters()
            set_ready(database_up and broker_up)
        TASKS.set(len(asyncio.all_tasks()))
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest())

    async def _refresh_backlog(self) -> bool:
        assert self.db is not None and self.backlog is not None  # a service's handler: it has a backlog
        try:
            for table, (count, age) in (await self.db.run(self.backlog, retry_seconds=0)).items():
                PENDING.labels(table).set(count)
                OLDEST_PENDING.labels(table).set(age or 0)
            return True
        except Unavailable:
            logger.warning("backlog gauges not refreshed: database unavailable")
            return False

    async def _refresh_dead_letters(self) -> bool:
        if self.broker is None or not self.broker.is_connected():
            return False
        try:
            for queue in (ORDER_REQUESTS, PAYMENT_RESULTS):
                DEAD_LETTERS.labels(queue).set(
                    await asyncio.wait_for(self.broker.publisher.waiting_count(dead_letter_queue(queue)), 2))
            return True
        except (*BROKER_ERRORS, AMQPError) as exc:  # AMQPError: e.g. a dead-letter queue deleted by hand
            logger.warning("dead-letter gauges not refreshed: %r", exc)
            return False
