"""Liveness and readiness routes shared by both services."""
from common.broker.connection import Broker
from common.db.database import Database
from common.web.auth import Authenticator
from common.web.envelope import BaseHandler
from common.web.errors import Unavailable


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
