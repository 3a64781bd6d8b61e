"""Order Service wiring: the Tornado application, the outbox worker and the payment-result consumer."""
import logging

from common.broker import Broker
from common.db import Database
from common.app import service_application
from common.lifecycle import Service, listen
from common.messages import PAYMENT_RESULTS, PaymentResult
from common.worker import BgWorker
from order_svc import repo, service
from order_svc.handlers import OrderHandler, OrdersHandler

logger = logging.getLogger(__name__)


def make_app(db, broker, settings, send_now):
    deps = dict(db=db, send_now=send_now, max_body_bytes=settings.max_body_bytes)
    return service_application([
        (r"/orders", OrdersHandler, deps),
        (r"/orders/([^/]+)", OrderHandler, deps),
    ], db, broker, repo.backlog)


class OrderService(Service):
    name = "order_svc"

    async def start(self):
        settings = self.settings
        self.port = settings.order_svc_port
        self.db = await Database.connect(settings.order_db_dsn, "order_svc", settings.db_pool_size)
        self.broker = await Broker.connect(settings.rabbitmq_url, settings.prefetch, queue_type=settings.queue_type)
        background = self.db.background
        self.outbox = BgWorker("outbox_os relay", lambda: service.relay_outbox(background, self.broker, settings),
                               settings.poll_interval)
        send_now = service.SendNow(background, self.broker, settings.resend_delay, self.outbox.kick) \
            if settings.fast_path else None
        self.cleanup = BgWorker("clean-up", lambda: service.clean_up(background, settings), settings.cleanup_interval)
        self.server = listen(make_app(self.db, self.broker, settings, send_now), self.port)
        self.start_workers(self.outbox, self.cleanup)
        await self.broker.consume(PAYMENT_RESULTS, PaymentResult.decode,
                                  lambda results: service.apply_payment_results(background, results),
                                  settings.batch_size)
        logger.info("Order Service listening on port %s", self.port)
