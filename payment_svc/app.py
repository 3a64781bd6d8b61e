"""The Payments Service's Tornado application: its routes, and what its handlers are given (`bootstrap` builds
it)."""
from tornado import web

from common.db.database import Database
from common.runtime.config import Settings
from common.web.app import service_application
from common.web.auth import Authenticator
from payment_svc.handlers import AccountHandler, AccountsHandler, MovementsHandler
from payment_svc.repo import PaymentRepository


def make_app(db: Database, repo: PaymentRepository, settings: Settings, auth: Authenticator) -> web.Application:
    deps = dict(db=db, repo=repo)
    return service_application([
        (r"/payments", AccountsHandler, deps),
        (r"/payments/([^/]+)", AccountHandler, deps),
        (r"/payments/([^/]+)/movements", MovementsHandler, deps),
    ], settings, auth)
