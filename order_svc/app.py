"""Order Service wiring: the Tornado application, the outbox relay and the payment-result consumer, built
from a database and a broker (`bootstrap`)."""
import functools

from common.app import service_admin_application, service_application
from common.auth import Authenticator
from common.broker import Broker
from common.config import Settings
from common.db import Database
from common.group_commit import GroupCommit
from common.lifecycle import BackendService, Consumption, Wiring
from common.messages import PAYMENT_RESULTS, PaymentResult
from common.worker import BgWorker
from order_svc import repo, service
from order_svc.handlers import OrderHandler, OrdersHandler
from order_svc.messaging import RelayOnly, RequestDispatch, SendAtOnce


def make_app(db: Database, settings: Settings, auth: Authenticator, dispatch: RequestDispatch):
    deps = dict(db=db, dispatch=dispatch, place_orders=GroupCommit(db, service.write_orders, settings.batch_size))
    return service_application([
        (r"/orders", OrdersHandler, deps),
        (r"/orders/([^/]+)", OrderHandler, deps),
    ], settings, auth)


def bootstrap(settings: Settings, db: Database, broker: Broker, auth: Authenticator) -> Wiring:
    background = db.background
    outbox = BgWorker("outbox_os relay", lambda: service.relay_outbox(background, broker.publisher, settings),
                      settings.poll_interval)
    cleanup = BgWorker("clean-up", lambda: service.clean_up(background, settings), settings.cleanup_interval)
    dispatch = SendAtOnce(background, broker.window, broker.is_connected, settings.resend_delay, outbox.kick) \
        if settings.fast_path else RelayOnly()
    return Wiring(make_app(db, settings, auth, dispatch),
                  service_admin_application(settings, db, broker, auth, repo.backlog),
                  workers=dict(outbox=outbox, cleanup=cleanup),
                  consumers=[Consumption(PAYMENT_RESULTS, PaymentResult,
                                         functools.partial(service.apply_payment_results, background),
                                         (settings.payment_svc_broker_user, settings.broker_operator_user))],
                  startup=[lambda: background.run(repo.make_unsent_due, transaction=False)])


class OrderService(BackendService):
    name = "order_svc"
    dsn_setting = "order_db_dsn"
    port_setting = "order_svc_port"
    admin_port_setting = "order_svc_admin_port"
    bootstrap = staticmethod(bootstrap)
