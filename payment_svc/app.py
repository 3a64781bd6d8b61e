"""Payments Service wiring: the Tornado application, the inbox and outbox workers, and the request consumer,
built from a database and a broker (`bootstrap`)."""
import functools

from common.broker.connection import Broker
from common.broker.messages import ORDER_REQUESTS, PaymentRequest
from common.db.database import Database
from common.runtime.config import Settings
from common.runtime.lifecycle import BackendService, Consumption, Wiring
from common.runtime.worker import BgWorker
from common.web.app import service_admin_application, service_application
from common.web.auth import Authenticator
from payment_svc import repo, service
from payment_svc.handlers import AccountHandler, AccountsHandler, MovementsHandler
from payment_svc.messaging import RelayOnly, SettleAtOnce


def make_app(db: Database, settings: Settings, auth: Authenticator):
    deps = dict(db=db)
    return service_application([
        (r"/payments", AccountsHandler, deps),
        (r"/payments/([^/]+)", AccountHandler, deps),
        (r"/payments/([^/]+)/movements", MovementsHandler, deps),
    ], settings, auth)


def bootstrap(settings: Settings, db: Database, broker: Broker, auth: Authenticator) -> Wiring:
    background = db.background
    outbox = BgWorker("outbox_ps relay",
                      lambda: service.relay_outbox(background, broker.publisher, settings.batch_size),
                      settings.poll_interval)
    inbox = BgWorker("inbox processor", lambda: service.process_inbox(background, dispatch, settings.batch_size),
                     settings.poll_interval)
    cleanup = BgWorker("clean-up", lambda: service.clean_up(background, settings), settings.cleanup_interval)
    dispatch = SettleAtOnce(background, broker.window, settings.resend_delay, outbox.kick, inbox.kick) \
        if settings.fast_path else RelayOnly()
    return Wiring(make_app(db, settings, auth),
                  service_admin_application(settings, db, broker, auth, repo.backlog),
                  workers=dict(inbox=inbox, outbox=outbox, cleanup=cleanup),
                  consumers=[Consumption(ORDER_REQUESTS, PaymentRequest,
                                         functools.partial(service.receive_requests, background, dispatch=dispatch),
                                         (settings.order_svc_broker_user, settings.broker_operator_user))])


class PaymentService(BackendService):
    name = "payment_svc"
    dsn_setting = "payment_db_dsn"
    port_setting = "payment_svc_port"
    admin_port_setting = "payment_svc_admin_port"
    bootstrap = staticmethod(bootstrap)
