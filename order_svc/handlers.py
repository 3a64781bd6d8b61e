"""HTTP handlers of the Order Service: parse and validate, check who may act, call `service`, reply with the
envelope."""
from common import tracing
from common.envelope import ApiHandler
from common.idempotency import from_request
from common.validation import parse_amount, parse_description, parse_id, parse_json_object, parse_page
from order_svc import service


def order_view(order):
    return {key: order[key] for key in ("order_id", "user_id", "amount", "description", "status")}


class OrdersHandler(ApiHandler):
    async def post(self):
        # The span whose context the order's outbox row keeps: the payment request continues its trace.
        with tracing.current.server("POST", "/orders", self.request.headers) as span:
            body = parse_json_object(self.request.body, required=("user_id", "amount"), optional=("description",))
            user_id = parse_id(body["user_id"], "user_id")
            amount, description = parse_amount(body["amount"]), parse_description(body.get("description"))
            self.principal.act_for(user_id)
            order = await service.place_order(self.place_orders, self.dispatch, user_id, amount, description,
                                              from_request(self.request, self.principal.subject))
            span.set_attribute("shop.order_id", order["order_id"])
            span.set_status_code(201)
        self.reply(201, "Order created.", order_id=order["order_id"], order=order_view(order))

    async def get(self):
        user = self.get_query_argument("user", "")
        if user:
            user_id = parse_id(user, "user")
            self.principal.act_for(user_id)
        else:
            user_id = self.principal.own_user()  # a user's own orders; everyone's only for an admin
        cursor, limit = parse_page(self.get_query_argument("cursor", ""), self.get_query_argument("limit", ""))
        orders, next_cursor = await service.list_orders(self.db, user_id, cursor, limit)
        self.reply(200, f"{len(orders)} orders.", orders=[order_view(o) for o in orders], next_cursor=next_cursor)


class OrderHandler(ApiHandler):
    async def get(self, order_id):
        order = await service.get_order(self.db, parse_id(order_id, "order_id"), self.principal)
        self.reply(200, f"Order {order['order_id']} is {order['status']}.", order=order_view(order))
