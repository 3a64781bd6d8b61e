"""Liveness and readiness routes shared by both services."""
from common.web.envelope import BaseHandler
from common.web.errors import Unavailable


class HealthHandler(BaseHandler):
    def get(self):
        self.reply(200, "Alive.")


class ServiceReadyHandler(BaseHandler):
    """Ready when PostgreSQL answers, the broker connection is open and the issuer's keys are loaded (without
    them every token is refused)."""

    async def get(self):
        if not self.auth.ready:
            raise Unavailable("The token issuer's keys are not loaded yet.")
        await self.db.ping()
        if not self.broker.is_connected():
            raise Unavailable("RabbitMQ unreachable.")
        self.reply(200, "Ready.")
