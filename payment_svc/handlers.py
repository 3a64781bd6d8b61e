"""HTTP handlers of the Payments Service: parse and validate, call `service`, reply with the envelope."""
from common.envelope import BaseHandler
from common.idempotency import from_request
from common.logs import request_id
from common.validation import parse_amount, parse_id, parse_json_object, parse_page
from payment_svc import service


def account_view(account):
    return {"user_id": account["user_id"], "balance": account["balance"]}


class AccountsHandler(BaseHandler):
    async def post(self):
        body = parse_json_object(self.request.body, required=("user_id",))
        account = await service.create_account(self.db, parse_id(body["user_id"], "user_id"),
                                               from_request(self.request))
        self.reply(201, "Account created.", account=account_view(account))


class AccountHandler(BaseHandler):
    async def get(self, user_id):
        account = await service.get_account(self.db, parse_id(user_id, "user_id"))
        self.reply(200, f"Balance of user {account['user_id']}.", account=account_view(account))

    async def put(self, user_id):
        user_id = parse_id(user_id, "user_id")
        body = parse_json_object(self.request.body, required=("amount",))
        idempotent = from_request(self.request)
        request_key = idempotent.key if idempotent else (None if request_id.get() == "-" else request_id.get())
        account = await service.top_up(self.db, user_id, parse_amount(body["amount"]), idempotent, request_key)
        self.reply(200, "Account topped up.", account=account_view(account))


def movement_view(movement):
    return {key: movement[key] for key in ("kind", "amount", "balance", "order_id", "created_at")}


class MovementsHandler(BaseHandler):
    async def get(self, user_id):
        user_id = parse_id(user_id, "user_id")
        cursor, limit = parse_page(self.get_query_argument("cursor", ""), self.get_query_argument("limit", ""))
        movements, next_cursor = await service.list_movements(self.db, user_id, cursor, limit)
        self.reply(200, f"{len(movements)} movements of user {user_id}.",
                   movements=[movement_view(m) for m in movements], next_cursor=next_cursor)
