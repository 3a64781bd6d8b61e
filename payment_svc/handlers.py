"""HTTP handlers of the Payments Service: parse and validate, check who may act, call `service`, reply with the
envelope."""
from typing import Any

from common.db.database import Database
from common.db.idempotency import from_request
from common.domain.validation import parse_amount, parse_id, parse_json_object, parse_page
from common.runtime.logs import request_id
from common.web.envelope import CLIENT_REQUEST_ID_HEADER, ApiHandler, label
from payment_svc import service
from payment_svc.repo import CreditOrigin, PaymentRepository, Row


def account_view(account: Row) -> dict[str, Any]:
    return {"user_id": account["user_id"], "balance": account["balance"]}


class PaymentsHandler(ApiHandler):
    # Given by `initialize` (`payment_svc.app.make_app`).
    db: Database
    repo: PaymentRepository


class AccountsHandler(PaymentsHandler):
    async def post(self) -> None:
        body = parse_json_object(self.request.body, required=("user_id",))
        user_id = parse_id(body["user_id"], "user_id")
        self.principal.act_for(user_id)
        idempotent = from_request(self.request, self.principal.subject)
        account = await service.create_account(self.db, self.repo, user_id, idempotent)
        self.reply(201, "Account created.", account=account_view(account))


class AccountHandler(PaymentsHandler):
    async def get(self, path_id: str) -> None:
        user_id = parse_id(path_id, "user_id")
        self.principal.act_for(user_id)
        account = await service.get_account(self.db, self.repo, user_id)
        self.reply(200, f"Balance of user {account['user_id']}.", account=account_view(account))

    async def put(self, path_id: str) -> None:
        user_id = parse_id(path_id, "user_id")
        self.principal.top_up(user_id)
        body = parse_json_object(self.request.body, required=("amount",))
        idempotent = from_request(self.request, self.principal.subject)
        origin = CreditOrigin(idempotent.key if idempotent else (None if request_id.get() == "-" else request_id.get()),
                              label(self.request.headers.get(CLIENT_REQUEST_ID_HEADER)), self.principal.subject)
        account = await service.top_up(self.db, self.repo, user_id, parse_amount(body["amount"]), idempotent, origin)
        self.reply(200, "Account topped up.", account=account_view(account))


def movement_view(movement: Row) -> dict[str, Any]:
    return {key: movement[key] for key in ("kind", "amount", "balance", "order_id", "created_at")}


class MovementsHandler(PaymentsHandler):
    async def get(self, path_id: str) -> None:
        user_id = parse_id(path_id, "user_id")
        self.principal.act_for(user_id)
        cursor, limit = parse_page(self.get_query_argument("cursor", ""), self.get_query_argument("limit", ""))
        movements, next_cursor = await service.list_movements(self.db, self.repo, user_id, cursor, limit)
        self.reply(200, f"{len(movements)} movements of user {user_id}.",
                   movements=[movement_view(m) for m in movements], next_cursor=next_cursor)
