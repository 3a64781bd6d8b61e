"""The Payments Service wired: its repository, the inbox and outbox workers and the request consumer, built from
a database and a broker (`bootstrap`), and the process that connects them (`PaymentService`,
`python -m payment_svc`)."""
import functools

from common.broker.connection import Broker
from common.broker.messages import ORDER_REQUESTS, PaymentRequest
from common.db.database import Database
from common.runtime.config import Settings
from common.runtime.lifecycle import BackendService
from common.runtime.wiring import Consumption, Wiring
from common.runtime.worker import BgWorker
from common.web.app import service_admin_application
from common.web.auth import Authenticator
from payment_svc import service
from payment_svc.app import make_app
from payment_svc.messaging import ResultDispatch, SettleAtOnce, StoreOnly
from payment_svc.repo import PaymentRepository, PostgresPayments


def bootstrap(settings: Settings, db: Database, broker: Broker, auth: Authenticator,
              repo: PaymentRepository | None = None) -> Wiring:
    """The service's parts over `db` and `broker`, storing through `repo` (by default PostgreSQL's)."""
    repo = repo or PostgresPayments()
    background = db.background or db
    outbox = BgWorker("outbox_ps relay",
                      lambda: service.relay_outbox(background, repo, broker.publisher, settings.batch_size,
                                                 dispatch),
                      settings.poll_interval)
    inbox = BgWorker("inbox processor", lambda: service.process_inbox(background, repo, dispatch, settings.batch_size),
                     settings.poll_interval)
    cleanup = BgWorker("clean-up", lambda: service.clean_up(background, repo, settings), settings.cleanup_interval)
    dispatch: ResultDispatch = SettleAtOnce(background, repo, broker.window, settings.resend_delay, outbox.kick,
                                            inbox.kick) if settings.fast_path else StoreOnly()
    return Wiring(make_app(db, repo, settings, auth),
                  service_admin_application(settings, db, broker, auth, repo.backlog),
                  workers=dict(inbox=inbox, outbox=outbox, cleanup=cleanup),
                  consumers=[Consumption(ORDER_REQUESTS, PaymentRequest,
                                         functools.partial(service.receive_requests, background, repo, dispatch),
                                         (settings.order_svc_broker_user, settings.broker_operator_user),
                                         background.ping)])


class PaymentService(BackendService):
    name = "payment_svc"
    dsn_setting = "payment_db_dsn"
    port_setting = "payment_svc_port"
    admin_port_setting = "payment_svc_admin_port"
    bootstrap = staticmethod(bootstrap)
