"""HTTP handlers of the Order Service: parse and validate, call `service`, reply with the envelope."""
from common import tracing
from common.envelope import BaseHandler
from common.idempotency import from_request
from common.validation import parse_amount, parse_description, parse_id, parse_json_object, parse_page
from order_svc import service


def order_view(order):
    return {key: order[key] for key in ("order_id", "user_id", "amount", "description", "status")}


class OrdersHandler(BaseHandler):
    async def post(self):
        # The span whose context the order's outbox row keeps: the payment request continues its trace.
        with tracing.current.server("POST", "/orders", self.request.headers) as span:
            body = parse_json_object(self.request.body, required=("user_id", "amount"), optional=("description",))
            order = await service.place_order(self.place_orders, self.dispatch, parse_id(body["user_id"], "user_id"),
                                              parse_amount(body["amount"]), parse_description(body.get("description")),
                                              from_request(self.request))
            span.set_attribute("shop.order_id", order["order_id"])
            span.set_status_code(201)
        self.reply(201, "Order created.", order_id=order["order_id"], order=order_view(order))

    async def get(self):
        user = self.get_query_argument("user", "")
        user_id = parse_id(user, "user") if user else None
        cursor, limit = parse_page(self.get_query_argument("cursor", ""), self.get_query_argument("limit", ""))
        orders, next_cursor = await service.list_orders(self.db, user_id, cursor, limit)
        self.reply(200, f"{len(orders)} orders.", orders=[order_view(o) for o in orders], next_cursor=next_cursor)


class OrderHandler(BaseHandler):
    async def get(self, order_id):
        order = await service.get_order(self.db, parse_id(order_id, "order_id"))
        self.reply(200, f"Order {order['order_id']} is {order['status']}.", order=order_view(order))
