"""HTTP handlers of the Payments Service: parse and validate, call `service`, reply with the envelope."""
from common.envelope import BaseHandler
from common.idempotency import from_request
from common.validation import parse_amount, parse_id, parse_json_object
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
        account = await service.top_up(self.db, user_id, parse_amount(body["amount"]), from_request(self.request))
        self.reply(200, "Account topped up.", account=account_view(account))
