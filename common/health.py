"""Liveness and readiness routes shared by both services."""
from common.envelope import BaseHandler
from common.errors import Unavailable


class HealthHandler(BaseHandler):
    def get(self):
        self.reply(200, "Alive.")


class ServiceReadyHandler(BaseHandler):
    """Ready when PostgreSQL answers and the broker connection is open."""

    async def get(self):
        await self.db.ping()
        if not self.broker.is_connected():
            raise Unavailable("RabbitMQ unreachable.")
        self.reply(200, "Ready.")
