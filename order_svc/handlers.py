"""HTTP handlers of the Order Service: parse and validate, call `service`, reply with the envelope."""
from common.envelope import BaseHandler
from common.validation import parse_amount, parse_description, parse_id, parse_json_object
from common.errors import InvalidInput
from common.idempotency import from_request
from order_svc import service

DEFAULT_PAGE = 100


def order_view(order):
    return {key: order[key] for key in ("order_id", "user_id", "amount", "description", "status")}


class OrdersHandler(BaseHandler):
    async def post(self):
        body = parse_json_object(self.request.body, required=("user_id", "amount"), optional=("description",))
        order = await service.place_order(self.db, parse_id(body["user_id"], "user_id"),
                                          parse_amount(body["amount"]), parse_description(body.get("description")),
                                          from_request(self.request), self.send_now)
        self.reply(201, "Order created.", order_id=order["order_id"], order=order_view(order))

    async def get(self):
        user = self.get_query_argument("user", "")
        user_id = parse_id(user, "user") if user else None
        cursor = self.get_query_argument("cursor", "")
        limit = self.get_query_argument("limit", "")
        limit = parse_id(limit, "limit") if limit else DEFAULT_PAGE
        if limit > service.MAX_PAGE:
            raise InvalidInput(f"'limit' must be at most {service.MAX_PAGE}.")
        orders, next_cursor = await service.list_orders(self.db, user_id, parse_id(cursor, "cursor") if cursor else 0,
                                                        limit)
        self.reply(200, f"{len(orders)} orders.", orders=[order_view(o) for o in orders], next_cursor=next_cursor)


class OrderHandler(BaseHandler):
    async def get(self, order_id):
        order = await service.get_order(self.db, parse_id(order_id, "order_id"))
        self.reply(200, f"Order {order['order_id']} is {order['status']}.", order=order_view(order))
