"""The Order Service's Tornado application: its routes, and what its handlers are given (`bootstrap` builds it)."""
from tornado import web

from common.db.database import Database
from common.runtime.config import Settings
from common.web.app import service_application
from common.web.auth import Authenticator
from order_svc.handlers import OrderHandler, OrdersHandler
from order_svc.messaging import RequestDispatch
from order_svc.repo import OrderRepository
from order_svc.service import PlaceOrders
from order_svc.waiters import Waiters


def make_app(db: Database, repo: OrderRepository, settings: Settings, auth: Authenticator, place_orders: PlaceOrders,
             dispatch: RequestDispatch, waiters: Waiters) -> web.Application:
    deps = dict(db=db, repo=repo, dispatch=dispatch, place_orders=place_orders, waiters=waiters)
    return service_application([
        (r"/orders", OrdersHandler, deps),
        (r"/orders/([^/]+)", OrderHandler, deps),
    ], settings, auth)
