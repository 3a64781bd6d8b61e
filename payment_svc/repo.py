"""The Payments Service's tables and every SQL statement it runs (SQLAlchemy Core)."""
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from common.broker.messages import OrderStatus, PaymentRequest
from common.db.database import (
    NOW,
    Query,
    delete_batch,
    execute,
    fetch_all,
    fetch_one,
    ids,
    older_than,
    pending_rows,
    seconds_from_now,
    texts,
)
from common.db.idempotency import IdempotentRequest, Outcome, forget_expired, run_once

metadata = sa.MetaData()

accounts = sa.Table(
    "accounts", metadata,
    sa.Column("user_id", sa.BigInteger, primary_key=True),
    sa.Column("balance", sa.Numeric(14, 2)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

inbox = sa.Table(
    "inbox", metadata,
    sa.Column("order_id", sa.BigInteger, primary_key=True),
    sa.Column("user_id", sa.BigInteger),
    sa.Column("amount", sa.Numeric(14, 2)),
    sa.Column("status", sa.Text),
    sa.Column("acked", sa.Boolean),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("processed_at", sa.DateTime(timezone=True)),
    sa.Column("traceparent", sa.Text),
)

outbox_ps = sa.Table(
    "outbox_ps", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("order_id", sa.BigInteger),
    sa.Column("status", sa.Text),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("traceparent", sa.Text),
)

account_movements = sa.Table(
    "account_movements", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("user_id", sa.BigInteger),
    sa.Column("kind", sa.Text),
    sa.Column("amount", sa.Numeric(14, 2)),
    sa.Column("balance", sa.Numeric(14, 2)),
    sa.Column("order_id", sa.BigInteger),
    sa.Column("request_key", sa.Text),
    sa.Column("principal", sa.Text),
    sa.Column("client_request_id", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True)),
)

ACCOUNT_FIELDS = (accounts.c.user_id, accounts.c.balance)

CREATE_ACCOUNT = Query(pg_insert(accounts).values(user_id=sa.bindparam("user_id"))
                       .on_conflict_do_nothing().returning(*ACCOUNT_FIELDS))
_account = sa.select(*ACCOUNT_FIELDS).where(accounts.c.user_id == sa.bindparam("user_id"))
GET_ACCOUNT = Query(_account)
LOCK_ACCOUNT = Query(_account.with_for_update())
# The new balance and its ledger row in one statement.
_credited = (sa.update(accounts).where(accounts.c.user_id == sa.bindparam("user_id"))
             .values(balance=sa.bindparam("balance"), updated_at=NOW).returning(*ACCOUNT_FIELDS).cte("credited"))
CREDIT = Query(sa.insert(account_movements)
               .from_select(["user_id", "kind", "amount", "balance", "request_key", "client_request_id", "principal"],
                            sa.select(_credited.c.user_id, sa.literal("credit"), sa.bindparam("amount"),
                                      _credited.c.balance, sa.bindparam("request_key"),
                                      sa.bindparam("client_request_id"), sa.bindparam("principal")))
               .add_cte(_credited).returning(account_movements.c.user_id, account_movements.c.balance))

_debits = sa.func.unnest(ids("user_ids"), ids("order_ids"), sa.bindparam("amounts", type_=ARRAY(sa.Numeric)),
                         sa.bindparam("balances", type_=ARRAY(sa.Numeric))) \
    .table_valued("user_id", "order_id", "amount", "balance").render_derived(name="debit")
RECORD_DEBITS = Query(sa.insert(account_movements)
                      .from_select(["user_id", "kind", "order_id", "amount", "balance"],
                                   sa.select(_debits.c.user_id, sa.literal("debit"), _debits.c.order_id,
                                             _debits.c.amount, _debits.c.balance)))

MOVEMENT_FIELDS = (account_movements.c.id, account_movements.c.kind, account_movements.c.amount,
                   account_movements.c.balance, account_movements.c.order_id, account_movements.c.created_at)
LIST_MOVEMENTS = Query(sa.select(*MOVEMENT_FIELDS)
                       .where(account_movements.c.user_id == sa.bindparam("user_id"),
                              account_movements.c.id > sa.bindparam("after"))
                       .order_by(account_movements.c.id).limit(sa.bindparam("limit")))

_requests = sa.func.unnest(ids("order_ids"), ids("user_ids"), sa.bindparam("amounts", type_=ARRAY(sa.Numeric)),
                           texts("traceparents")) \
    .table_valued("order_id", "user_id", "amount", "traceparent").render_derived(name="request")
_stored = pg_insert(inbox).from_select(["order_id", "user_id", "amount", "traceparent"],
                                       sa.select(_requests.c.order_id, _requests.c.user_id, _requests.c.amount,
                                                 _requests.c.traceparent))
# A request seen again is unacked again, and carries on in the trace of its latest message (if it has one).
STORE_REQUESTS = Query(_stored.on_conflict_do_update(
    index_elements=[inbox.c.order_id],
    set_={"acked": False, "traceparent": sa.func.coalesce(_stored.excluded.traceparent, inbox.c.traceparent)}))

USERS_WITH_UNACKED = Query(sa.select(inbox.c.user_id).where(inbox.c.acked.is_(False))
                           .group_by(inbox.c.user_id).order_by(sa.func.min(inbox.c.order_id))
                           .limit(sa.bindparam("limit")))
_candidates = sa.func.unnest(ids("user_ids")).table_valued("user_id").render_derived(name="candidate")
CLAIM_USERS = Query(sa.select(_candidates.c.user_id).where(sa.func.pg_try_advisory_xact_lock(_candidates.c.user_id)))
LOCK_UNACKED = Query(sa.select(inbox.c.order_id, inbox.c.user_id, inbox.c.amount, inbox.c.status, inbox.c.traceparent)
                     .where(inbox.c.user_id == sa.any_(ids("user_ids")), inbox.c.acked.is_(False))
                     .order_by(inbox.c.user_id, inbox.c.order_id).with_for_update())
LOCK_ACCOUNTS = Query(sa.select(*ACCOUNT_FIELDS).where(accounts.c.user_id == sa.any_(ids("user_ids")))
                      .with_for_update())
_balances = sa.func.unnest(ids("user_ids"), sa.bindparam("balances", type_=ARRAY(sa.Numeric))) \
    .table_valued("user_id", "balance").render_derived(name="funded")
DEBIT_ACCOUNTS = Query(sa.update(accounts).where(accounts.c.user_id == _balances.c.user_id)
                     .values(balance=_balances.c.balance, updated_at=NOW))

# Settled rows marked acked with their status, and each status queued for the Order Service, in one statement.
_statuses = sa.func.unnest(ids("order_ids"), sa.bindparam("statuses", type_=ARRAY(sa.Text))) \
    .table_valued("order_id", "status").render_derived(name="decided")
_settled = (sa.update(inbox).where(inbox.c.order_id == _statuses.c.order_id)
            .values(status=_statuses.c.status, acked=True, processed_at=sa.func.coalesce(inbox.c.processed_at, NOW))
            .returning(inbox.c.order_id).cte("settled"))
_due = seconds_from_now(sa.bindparam("due_in"))
_results = sa.func.unnest(ids("order_ids"), sa.bindparam("statuses", type_=ARRAY(sa.Text)), texts("traceparents")) \
    .table_valued("order_id", "status", "traceparent").render_derived(name="result")
SETTLE_AND_QUEUE = Query(sa.insert(outbox_ps)
                         .from_select(["order_id", "status", "next_attempt_at", "traceparent"],
                                      sa.select(_results.c.order_id, _results.c.status, _due, _results.c.traceparent))
                         .add_cte(_settled)
                         .returning(outbox_ps.c.id, outbox_ps.c.order_id, outbox_ps.c.status, outbox_ps.c.traceparent))

_outbox_ids = outbox_ps.c.id == sa.any_(ids("ids"))
LOCK_OUTBOX = Query(sa.select(outbox_ps.c.id, outbox_ps.c.order_id, outbox_ps.c.status, outbox_ps.c.traceparent)
                    .where(outbox_ps.c.next_attempt_at <= NOW)
                    .order_by(outbox_ps.c.id).limit(sa.bindparam("limit")).with_for_update(skip_locked=True))
DELETE_OUTBOX = Query(sa.delete(outbox_ps).where(_outbox_ids))
DUE_NOW = Query(sa.update(outbox_ps).where(_outbox_ids).values(next_attempt_at=NOW))


Row = dict[str, Any]


class CreditOrigin(NamedTuple):
    """Where a top-up came from, as its ledger row records it."""
    request_key: str | None = None  # its Idempotency-Key, else the request id the gateway gave it
    client_request_id: str | None = None  # the X-Request-ID its client sent (a label)
    principal: str | None = None  # who topped up: the token's subject


@dataclass(frozen=True)
class Debit:
    """One debit: `order_id` took `amount` from `user_id`, leaving `balance`."""
    user_id: int
    order_id: int
    amount: Decimal
    balance: Decimal


class PaymentRepository(Protocol):
    """The Payments Service's storage, the port its use cases are written against: each method does its part in
    the transaction of `cur` (`Database.run`). `PostgresPayments` is the product's; the unit tests' fake keeps rows
    in memory."""

    async def run_once(self, cur: Any, idempotent: IdempotentRequest | None,
                       work: Callable[..., Awaitable[Any]], *args: Any) -> Outcome:
        """`await work(cur, *args)` once per idempotency key: a replay is the first call's result. Raises
        `IdempotencyKeyReused` if the key came with another request."""
    async def forget_expired_keys(self, cur: Any, hours: float, limit: int) -> bool:
        """Delete up to `limit` idempotency keys older than `hours`; True if more may be left."""
    async def create_account(self, cur: Any, user_id: int) -> Row | None:
        """The new account, or None if the user already has one."""
    async def get_account(self, cur: Any, user_id: int, lock: bool = False) -> Row | None: ...
    async def credit(self, cur: Any, user_id: int, amount: Decimal, balance: Decimal, origin: CreditOrigin) -> Row:
        """Set the account's new `balance` after a credit of `amount` and write its ledger row, naming its
        origin."""
    async def debit(self, cur: Any, debits: Sequence[Debit]) -> None:
        """Take each debit from its account (in order: a user's last debit leaves its balance) and write its
        ledger row."""
    async def list_movements(self, cur: Any, user_id: int, after: int, limit: int) -> list[Row]: ...
    async def store_requests(self, cur: Any, requests: Sequence[PaymentRequest]) -> None:
        """Insert new payment requests as `NEW`; a request seen before is marked unacked again."""
    async def users_with_unacked(self, cur: Any, limit: int) -> list[int]: ...
    async def claim_users(self, cur: Any, user_ids: list[int]) -> list[int]:
        """Of `user_ids`, those this transaction now exclusively settles (others are busy in another worker)."""
    async def lock_unacked(self, cur: Any, user_ids: list[int]) -> list[Row]:
        """The claimed users' unacked inbox rows, in the order they must be settled."""
    async def lock_accounts(self, cur: Any, user_ids: list[int]) -> dict[int, Decimal]: ...
    async def settle_inbox(self, cur: Any, statuses: Mapping[int, str], traces: list[str | None],
                           due_in: float) -> list[Row]:
        """Mark rows acked with their final {order_id: status}, and queue each status for the Order Service, due
        for the relay in `due_in` seconds, with its trace context (`traces`, in the order of `statuses`); returns
        the queued rows."""
    async def lock_outbox(self, cur: Any, limit: int) -> list[Row]: ...
    async def delete_outbox(self, cur: Any, ids: list[int]) -> None: ...
    async def make_due(self, cur: Any, ids: list[int]) -> None: ...
    async def backlog(self, cur: Any) -> dict[str, tuple[int, float]]:
        """{table: (rows waiting, age of the oldest in seconds)} for the unacked inbox and the outbox."""
    async def forget_processed(self, cur: Any, days: float, limit: int) -> bool:
        """Delete up to `limit` settled inbox rows processed more than `days` ago; True if more may be left."""


class PostgresPayments:
    """`PaymentRepository` on PostgreSQL: the statements above."""

    async def run_once(self, cur: Any, idempotent: IdempotentRequest | None,
                       work: Callable[..., Awaitable[Any]], *args: Any) -> Outcome:
        return await run_once(cur, idempotent, work, *args)

    async def forget_expired_keys(self, cur: Any, hours: float, limit: int) -> bool:
        return await forget_expired(cur, hours, limit)

    async def create_account(self, cur: Any, user_id: int) -> Row | None:
        return await fetch_one(cur, CREATE_ACCOUNT, user_id=user_id)

    async def get_account(self, cur: Any, user_id: int, lock: bool = False) -> Row | None:
        return await fetch_one(cur, LOCK_ACCOUNT if lock else GET_ACCOUNT, user_id=user_id)

    async def credit(self, cur: Any, user_id: int, amount: Decimal, balance: Decimal, origin: CreditOrigin) -> Row:
        credited = await fetch_one(cur, CREDIT, user_id=user_id, amount=amount, balance=balance,
                                   request_key=origin.request_key, client_request_id=origin.client_request_id,
                                   principal=origin.principal)
        assert credited is not None  # the caller holds the account's row lock: it exists
        return credited

    async def debit(self, cur: Any, debits: Sequence[Debit]) -> None:
        balances = {debit.user_id: debit.balance for debit in debits}
        await execute(cur, DEBIT_ACCOUNTS, user_ids=list(balances), balances=list(balances.values()))
        await self.record_debits(cur, debits)

    async def record_debits(self, cur: Any, debits: Sequence[Debit]) -> None:
        """Write the ledger row of each debit."""
        await execute(cur, RECORD_DEBITS, user_ids=[d.user_id for d in debits],
                      order_ids=[d.order_id for d in debits], amounts=[d.amount for d in debits],
                      balances=[d.balance for d in debits])

    async def list_movements(self, cur: Any, user_id: int, after: int, limit: int) -> list[Row]:
        return await fetch_all(cur, LIST_MOVEMENTS, user_id=user_id, after=after, limit=limit)

    async def store_requests(self, cur: Any, requests: Sequence[PaymentRequest]) -> None:
        # One row per order, in order_id order (a consistent lock order between concurrent batches).
        unique = {r.order_id: r for r in requests}
        rows = [unique[order_id] for order_id in sorted(unique)]
        await execute(cur, STORE_REQUESTS, order_ids=[r.order_id for r in rows], user_ids=[r.user_id for r in rows],
                      amounts=[r.amount for r in rows], traceparents=[r.trace for r in rows])

    async def users_with_unacked(self, cur: Any, limit: int) -> list[int]:
        return [row["user_id"] for row in await fetch_all(cur, USERS_WITH_UNACKED, limit=limit)]

    async def claim_users(self, cur: Any, user_ids: list[int]) -> list[int]:
        return [row["user_id"] for row in await fetch_all(cur, CLAIM_USERS, user_ids=user_ids)]

    async def lock_unacked(self, cur: Any, user_ids: list[int]) -> list[Row]:
        return await fetch_all(cur, LOCK_UNACKED, user_ids=user_ids)

    async def lock_accounts(self, cur: Any, user_ids: list[int]) -> dict[int, Decimal]:
        return {row["user_id"]: row["balance"] for row in await fetch_all(cur, LOCK_ACCOUNTS, user_ids=user_ids)}

    async def settle_inbox(self, cur: Any, statuses: Mapping[int, str], traces: list[str | None],
                           due_in: float) -> list[Row]:
        return await fetch_all(cur, SETTLE_AND_QUEUE, order_ids=list(statuses), statuses=list(statuses.values()),
                               traceparents=traces, due_in=due_in)

    async def lock_outbox(self, cur: Any, limit: int) -> list[Row]:
        return await fetch_all(cur, LOCK_OUTBOX, limit=limit)

    async def delete_outbox(self, cur: Any, ids: list[int]) -> None:
        await execute(cur, DELETE_OUTBOX, ids=ids)

    async def make_due(self, cur: Any, ids: list[int]) -> None:
        await execute(cur, DUE_NOW, ids=ids)

    async def backlog(self, cur: Any) -> dict[str, tuple[int, float]]:
        return {"inbox": await pending_rows(cur, inbox.c.created_at, inbox.c.acked.is_(False)),
                "outbox_ps": await pending_rows(cur, outbox_ps.c.created_at)}

    async def forget_processed(self, cur: Any, days: float, limit: int) -> bool:
        return await delete_batch(cur, inbox.c.order_id, limit, inbox.c.acked, inbox.c.status != OrderStatus.NEW,
                                  older_than(inbox.c.processed_at, days * 86400))
