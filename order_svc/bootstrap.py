"""The Order Service wired: its repository, the outbox relay, the payment-result consumer and the LISTEN
connection that wakes waiting requests, built from a database and a broker (`bootstrap`), and the process that
connects them (`OrderService`, `python -m order_svc`)."""
import functools

from common.broker.connection import Broker
from common.broker.messages import PAYMENT_RESULTS, PaymentResult
from common.db.database import Database
from common.db.group_commit import GroupCommit
from common.db.pg_hosts import Hosts, with_timeouts
from common.runtime.config import Settings
from common.runtime.lifecycle import BackendService
from common.runtime.wiring import Consumption, Wiring
from common.runtime.worker import BgWorker
from common.web.app import service_admin_application
from common.web.auth import Authenticator
from order_svc import outcomes, service
from order_svc.app import make_app
from order_svc.listener import Listener
from order_svc.messaging import RequestDispatch, SendAtOnce, SendByRelay
from order_svc.repo import FINAL_ORDERS_CHANNEL, OrderRepository, PostgresOrders
from order_svc.service import PlaceOrders
from order_svc.waiters import Waiters


def bootstrap(settings: Settings, db: Database, broker: Broker, auth: Authenticator,
              repo: OrderRepository | None = None) -> Wiring:
    """The service's parts over `db` and `broker`, storing through `repo` (by default PostgreSQL's)."""
    repo = repo or PostgresOrders()
    background = db.background or db
    outbox = BgWorker("outbox_os relay",
                      lambda: service.relay_outbox(background, repo, broker.publisher, settings, dispatch),
                      settings.poll_interval)
    cleanup = BgWorker("clean-up", lambda: service.clean_up(background, repo, settings), settings.cleanup_interval)
    dispatch: RequestDispatch = SendAtOnce(background, repo, broker.window, broker.is_connected,
                                           settings.resend_delay, outbox.kick) if settings.fast_path else SendByRelay()
    # Blocking reads: the requests held until their order is final, woken as this process applies the result, or
    # through a LISTEN connection of its own when another replica does.
    waiters = Waiters(settings.max_waiting, settings.max_waiting_per_user)
    listener = Listener(Hosts(with_timeouts(settings.order_db_dsn, settings.db_timeouts)), FINAL_ORDERS_CHANNEL,
                        functools.partial(outcomes.wake_waiters, background, repo, waiters),
                        functools.partial(outcomes.read_waited_orders, background, repo, waiters))
    place_orders: PlaceOrders = GroupCommit(db, repo.place_orders, settings.batch_size,
                                            functools.partial(service.orders_committed, dispatch))
    return Wiring(make_app(db, repo, settings, auth, place_orders, dispatch, waiters),
                  service_admin_application(settings, db, broker, auth, repo.backlog),
                  workers=dict(outbox=outbox, cleanup=cleanup, listener=listener),
                  draining=[waiters.let_go],
                  consumers=[Consumption(PAYMENT_RESULTS, PaymentResult,
                                         functools.partial(service.apply_payment_results, background, repo, waiters),
                                         (settings.payment_svc_broker_user, settings.broker_operator_user),
                                         background.ping)],
                  startup=[lambda: background.run(repo.make_unsent_due, transaction=False)])


class OrderService(BackendService):
    name = "order_svc"
    dsn_setting = "order_db_dsn"
    port_setting = "order_svc_port"
    admin_port_setting = "order_svc_admin_port"
    bootstrap = staticmethod(bootstrap)
