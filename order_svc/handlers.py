"""HTTP handlers of the Order Service: parse and validate, check who may act, call `service`, reply with the
envelope."""
import hashlib
from typing import Any

from common.broker.messages import FINAL_STATUSES
from common.db.database import Database
from common.db.idempotency import IdempotentRequest, from_request
from common.domain.json_text import to_json
from common.domain.validation import parse_amount, parse_description, parse_id, parse_json_object, parse_page
from common.observability import tracing
from common.web.envelope import ApiHandler, envelope
from common.web.waiting import PREFER, PREFERENCE_APPLIED, parse_wait, preferred_wait
from order_svc import outcomes, service
from order_svc.messaging import RequestDispatch
from order_svc.repo import OrderRepository, Row
from order_svc.service import PlaceOrders
from order_svc.waiters import Mark, Waiter, Waiters


def order_view(order: Row) -> dict[str, Any]:
    return {key: order[key] for key in ("order_id", "user_id", "amount", "description", "status")}


def order_message(order: Row) -> str:
    return f"Order {order['order_id']} is {order['status']}."


class Holding(ApiHandler):
    """A handler that may hold its request until an order is final (`waiters`, an `order_svc.waiters.Waiters`).
    Its waiter stops waiting when the client goes away: Tornado calls `on_connection_close` then."""

    # Given by `initialize` (`order_svc.app.make_app`).
    db: Database
    repo: OrderRepository
    dispatch: RequestDispatch
    place_orders: PlaceOrders
    waiters: Waiters

    waiter: Waiter | None = None
    client_left = False

    async def hold(self, order: Row, seconds: int, since: Mark) -> tuple[Row, bool]:
        """(the order once final or after `seconds`, True), or (`order`, False) at once beyond a cap or when the
        client has left already. `since`: the waiters' mark taken before `order` was read."""
        if self.client_left:  # while its order was read: nobody to hold the answer for
            return order, False
        # The caller: the token's subject; with AUTH_MODE=off nobody is known, and the order's user stands in.
        caller = self.principal.subject or f"user {order['user_id']}"
        self.waiter = self.waiters.join(order["order_id"], caller, since)
        if self.waiter is None:
            return order, False
        try:
            return await outcomes.await_outcome(self.db, self.repo, self.waiters, self.waiter, order, seconds), True
        finally:
            self.waiter = None

    def on_connection_close(self) -> None:
        self.client_left = True
        if self.waiter is not None:
            self.waiters.leave(self.waiter)
        super().on_connection_close()


class OrdersHandler(Holding):
    async def post(self) -> None:
        # The span whose context the order's outbox row keeps: the payment request continues its trace.
        with tracing.current.server("POST", "/orders", self.request.headers) as span:
            body = parse_json_object(self.request.body, required=("user_id", "amount"), optional=("description",))
            user_id = parse_id(body["user_id"], "user_id")
            amount, description = parse_amount(body["amount"]), parse_description(body.get("description"))
            self.principal.act_for(user_id)
            idempotent = from_request(self.request, self.principal.subject)
            since = self.waiters.mark()
            order, replayed = await service.place_order(self.place_orders, self.dispatch, user_id, amount,
                                                        description, idempotent)
            span.set_attribute("shop.order_id", order["order_id"])
            span.set_status_code(201)
        seconds = preferred_wait(self.request.headers.get(PREFER))
        if seconds and not replayed:  # a replay answers as the first answer did, without waiting again
            order = await self.wait_for_outcome(order, seconds, since, idempotent)
        self.reply(201, "Order created.", order_id=order["order_id"], order=order_view(order))

    async def wait_for_outcome(self, order: Row, seconds: int, since: Mark,
                               idempotent: IdempotentRequest | None) -> Row:
        """RFC 7240 `Prefer: wait`: the order final if its payment settles within `seconds`, else as placed."""
        final, waited = await self.hold(order, seconds, since)
        if waited:
            self.set_header(PREFERENCE_APPLIED, f"wait={seconds}")
        if final["status"] not in FINAL_STATUSES:
            return order
        # The key's replay must answer this answer: the final status goes out only once stored for the key.
        if idempotent is None or await outcomes.remember_answer(self.db, self.repo, idempotent, final):
            return final
        return order

    async def get(self) -> None:
        user = self.get_query_argument("user", "")
        user_id: int | None  # None: every user's
        if user:
            user_id = parse_id(user, "user")
            self.principal.act_for(user_id)
        else:
            user_id = self.principal.own_user()  # a user's own orders; everyone's only for an admin
        cursor, limit = parse_page(self.get_query_argument("cursor", ""), self.get_query_argument("limit", ""))
        orders, next_cursor = await service.list_orders(self.db, self.repo, user_id, cursor, limit)
        self.reply(200, f"{len(orders)} orders.", orders=[order_view(o) for o in orders], next_cursor=next_cursor)


class OrderHandler(Holding):
    async def get(self, path_id: str) -> None:
        order_id = parse_id(path_id, "order_id")
        seconds = parse_wait(self.get_query_arguments("wait"))
        since = self.waiters.mark()
        # Who may see it is decided here, before any waiting: another user's order is a 404 at once.
        order = await service.get_order(self.db, self.repo, order_id, self.principal)
        if seconds and order["status"] not in FINAL_STATUSES and self.holds(order):
            order, _ = await self.hold(order, seconds, since)
        self.reply(200, order_message(order), order=order_view(order))

    def holds(self, order: Row) -> bool:
        """Whether the client holds this representation of `order`, or asks for none in particular (no
        If-None-Match): then a wait is for another. With an If-None-Match naming another Etag the client lacks
        this one: it is the answer, at once. The Etag is the one Tornado gives the reply (`compute_etag`)."""
        if self.request.headers.get("If-None-Match") is None:
            return True
        body = to_json(envelope(True, order_message(order), order=order_view(order))).encode()
        self.set_header("Etag", f'"{hashlib.sha1(body).hexdigest()}"')
        try:
            return self.check_etag_header()
        finally:
            self.clear_header("Etag")
