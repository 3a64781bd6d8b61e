"""Payments Service wiring: the Tornado application, the inbox and outbox workers, and the request consumer."""
import logging

from common.broker import Broker
from common.db import Database
from common.app import service_application
from common.lifecycle import Service, listen
from common.messages import ORDER_REQUESTS, PaymentRequest
from common.worker import BgWorker
from payment_svc import repo, service
from payment_svc.handlers import AccountHandler, AccountsHandler

logger = logging.getLogger(__name__)


def make_app(db, broker, settings):
    deps = dict(db=db, max_body_bytes=settings.max_body_bytes)
    return service_application([
        (r"/payments", AccountsHandler, deps),
        (r"/payments/([^/]+)", AccountHandler, deps),
    ], db, broker, repo.backlog)


class PaymentService(Service):
    name = "payment_svc"

    async def start(self):
        settings = self.settings
        self.port = settings.payment_svc_port
        self.db = await Database.connect(settings.payment_db_dsn, "payment_svc", settings.db_pool_size)
        self.broker = await Broker.connect(settings.rabbitmq_url, settings.prefetch, queue_type=settings.queue_type)
        background = self.db.background
        self.outbox = BgWorker("outbox_ps relay",
                               lambda: service.relay_outbox(background, self.broker, settings.batch_size),
                               settings.poll_interval)
        self.inbox = BgWorker("inbox processor", self._process_inbox, settings.poll_interval)
        self.cleanup = BgWorker("clean-up", lambda: service.clean_up(background, settings), settings.cleanup_interval)
        self.send_now = service.SendNow(background, self.broker, settings.resend_delay, self.outbox.kick) \
            if settings.fast_path else None
        self.server = listen(make_app(self.db, self.broker, settings), self.port)
        self.start_workers(self.inbox, self.outbox, self.cleanup)
        await self.broker.consume(ORDER_REQUESTS, PaymentRequest.decode, self._receive, settings.batch_size)
        logger.info("Payments Service listening on port %s", self.port)

    async def _receive(self, requests):
        if not await service.receive_requests(self.db.background, requests, self.send_now) and self.send_now:
            self.inbox.kick()
        return {}

    async def _process_inbox(self):
        more = await service.process_inbox(self.db.background, self.settings.batch_size)
        if self.settings.fast_path:
            self.outbox.kick()
        return more
