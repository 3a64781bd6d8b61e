"""Order Service wiring: the Tornado application, the outbox relay, the payment-result consumer and the LISTEN
connection that wakes waiting requests, built from a database and a broker (`bootstrap`)."""
import functools

from common.broker.connection import Broker
from common.broker.messages import PAYMENT_RESULTS, PaymentResult
from common.db.database import Database
from common.db.group_commit import GroupCommit
from common.db.pg_hosts import Hosts
from common.runtime.config import Settings
from common.runtime.lifecycle import BackendService, Consumption, Wiring
from common.runtime.worker import BgWorker
from common.web.app import service_admin_application, service_application
from common.web.auth import Authenticator
from order_svc import outcomes, repo, service
from order_svc.handlers import OrderHandler, OrdersHandler
from order_svc.listener import Listener
from order_svc.messaging import RelayOnly, RequestDispatch, SendAtOnce
from order_svc.waiters import Waiters


def make_app(db: Database, settings: Settings, auth: Authenticator, dispatch: RequestDispatch, waiters: Waiters):
    deps = dict(db=db, dispatch=dispatch, place_orders=GroupCommit(db, service.write_orders, settings.batch_size),
                waiters=waiters)
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
    # Blocking reads: the requests held until their order is final, woken as this process applies the result, or
    # through a LISTEN connection of its own when another replica does.
    waiters = Waiters(settings.max_waiting, settings.max_waiting_per_user)
    listener = Listener(Hosts(settings.order_db_dsn), repo.FINAL_ORDERS_CHANNEL,
                        functools.partial(outcomes.wake_waiters, background, waiters),
                        functools.partial(outcomes.read_waited_orders, background, waiters))
    return Wiring(make_app(db, settings, auth, dispatch, waiters),
                  service_admin_application(settings, db, broker, auth, repo.backlog),
                  workers=dict(outbox=outbox, cleanup=cleanup, listener=listener),
                  draining=[waiters.let_go],
                  consumers=[Consumption(PAYMENT_RESULTS, PaymentResult,
                                         functools.partial(service.apply_payment_results, background, waiters),
                                         (settings.payment_svc_broker_user, settings.broker_operator_user))],
                  startup=[lambda: background.run(repo.make_unsent_due, transaction=False)])


class OrderService(BackendService):
    name = "order_svc"
    dsn_setting = "order_db_dsn"
    port_setting = "order_svc_port"
    admin_port_setting = "order_svc_admin_port"
    bootstrap = staticmethod(bootstrap)
