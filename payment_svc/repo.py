"""The Payments Service's tables and every SQL statement it runs (SQLAlchemy Core)."""
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert

from common.broker.messages import OrderStatus, PaymentRequest
from common.db.database import (
    NOW,
    Cursor,
    Query,
    delete_batch,
    execute,
    fetch_all,
    fetch_one,
    ids,
    not_locked_elsewhere,
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

# Settling, in one round trip: BEGIN, `_claim` and the settling statement, sent as one query (`SETTLE`); COMMIT
# goes alone (see `common.db.database.BeginWithFirst`). `_claim` takes the advisory lock of each user it can (of
# the users asked for, and with `pick` > 0 of those with the oldest unacked requests), so that one transaction of
# any instance settles a user's requests, and leaves the users it got in a transaction-local setting. The settling
# statement reads them from there: it is a statement of its own because a statement sees the database as it was
# when it began, and a user's settling committed by another transaction between that moment and the taking of
# the lock would be invisible to it.
SETTLING_USERS, CANDIDATES = "'shop.settling_users'", "'shop.settle_candidates'"
_asked = sa.func.unnest(ids("user_ids")).table_valued("user_id").render_derived(name="asked")
_oldest_waiting = (sa.select(inbox.c.user_id).where(sa.not_(inbox.c.acked)).group_by(inbox.c.user_id)
                   .order_by(sa.func.min(inbox.c.order_id)).limit(sa.bindparam("pick")))
_candidates = sa.union(sa.select(_asked.c.user_id), _oldest_waiting).subquery("candidate")
_got = sa.func.array_agg(_candidates.c.user_id).filter(sa.func.pg_try_advisory_xact_lock(_candidates.c.user_id))
_claim = (sa.select(
    sa.func.set_config(sa.literal_column(SETTLING_USERS),
                       sa.cast(sa.func.coalesce(_got, sa.literal_column("'{}'::BIGINT[]")), sa.Text), sa.true())
    .label("claimed"),
    sa.func.set_config(sa.literal_column(CANDIDATES), sa.cast(sa.func.count(), sa.Text), sa.true())
    .label("candidates")).select_from(_candidates))

# The batch of requests received (none for the inbox worker), one row per order, in `order_id` order.
_batch = sa.func.unnest(ids("order_ids"), ids("request_user_ids"),
                           sa.bindparam("amounts", type_=ARRAY(sa.Numeric)), texts("traceparents")) \
    .table_valued("order_id", "user_id", "amount", "traceparent").render_derived(name="request")
_given = sa.select(_batch).cte("given")
_claimed_ids = sa.cast(sa.func.current_setting(sa.literal_column(SETTLING_USERS)), ARRAY(sa.BigInteger))
_claimed = sa.select(sa.func.unnest(_claimed_ids).label("user_id")).cte("claimed")


def _is_claimed(user_id: Any) -> Any:
    return user_id.in_(sa.select(_claimed.c.user_id))


# The inbox rows this settles or stores again, locked in `order_id` order (the lock order of every writer of the
# inbox): the claimed users' unacked rows, and the batch's rows stored before. (Both conditions compare with
# arrays, so each is an index scan: the unacked rows' partial index, the primary key.)
_locked = (sa.select(inbox.c.order_id, inbox.c.user_id, inbox.c.amount, inbox.c.status, inbox.c.acked,
                     inbox.c.traceparent)
           .where(sa.or_(sa.and_(inbox.c.user_id == sa.any_(_claimed_ids), sa.not_(inbox.c.acked)),
                         inbox.c.order_id == sa.any_(ids("order_ids"))))
           .order_by(inbox.c.order_id).with_for_update().cte("locked").prefix_with("MATERIALIZED"))
# What the claimed users have pending: the batch's requests (as stored before, if they were: a settled one keeps
# its status and only sends it again) and their other unacked requests; numbered per user in `order_id` order.
_owner = sa.func.coalesce(_locked.c.user_id, _given.c.user_id)
_in_batch = sa.select(_given.c.order_id, _owner.label("user_id"),
                      sa.func.coalesce(_locked.c.amount, _given.c.amount).label("amount"),
                      sa.func.coalesce(_locked.c.status, OrderStatus.NEW.value).label("status"),
                      sa.func.coalesce(_given.c.traceparent, _locked.c.traceparent).label("traceparent")) \
    .select_from(_given.outerjoin(_locked, _locked.c.order_id == _given.c.order_id)).where(_is_claimed(_owner))
_left_waiting = sa.select(_locked.c.order_id, _locked.c.user_id, _locked.c.amount, _locked.c.status,
                          _locked.c.traceparent) \
    .where(_locked.c.acked.is_(False), _is_claimed(_locked.c.user_id),
           _locked.c.order_id.not_in(sa.select(_given.c.order_id)))
_pending = sa.union_all(_in_batch, _left_waiting).subquery("pending")
_numbered = sa.select(_pending, sa.func.row_number().over(partition_by=_pending.c.user_id,
                                                          order_by=_pending.c.order_id).label("n")).cte("numbered")
# The claimed users' accounts, locked against a concurrent top-up (whose balance this then reads).
_funds = (sa.select(accounts.c.user_id, accounts.c.balance).where(accounts.c.user_id == sa.any_(_claimed_ids))
          .with_for_update().cte("funds"))


def _null(type_: Any) -> Any:
    return sa.cast(sa.null(), type_)


# The rule, request after request per user (a recursive walk: step n decides the user's n-th request against
# the balance step n - 1 left): a `NEW` request is `FINISHED` and debited if the balance covers it, else
# `CANCELLED` (also with no account, a NULL balance); a request decided before keeps its status. Plain NUMERIC
# throughout: a recursive query's columns keep the type of its first term.
_walk = sa.select(_claimed.c.user_id, sa.cast(0, sa.BigInteger).label("n"), _null(sa.BigInteger).label("order_id"),
                  _null(sa.Numeric).label("amount"), _null(sa.Text).label("status"),
                  sa.cast(_funds.c.balance, sa.Numeric).label("balance"), sa.false().label("debited"),
                  _null(sa.Text).label("traceparent")) \
    .select_from(_claimed.outerjoin(_funds, _funds.c.user_id == _claimed.c.user_id)).cte("walk", recursive=True)
_step, _before = _numbered.alias("step"), _walk.alias("before")
_covered = sa.and_(_step.c.status == OrderStatus.NEW.value,
                   sa.func.coalesce(_before.c.balance >= _step.c.amount, sa.false()))
_walk = _walk.union_all(
    sa.select(_before.c.user_id, _step.c.n, _step.c.order_id, sa.cast(_step.c.amount, sa.Numeric),
              sa.case((_step.c.status != OrderStatus.NEW.value, _step.c.status),
                      (_covered, sa.literal(OrderStatus.FINISHED.value)),
                      else_=sa.literal(OrderStatus.CANCELLED.value)),
              sa.case((_covered, _before.c.balance - _step.c.amount), else_=_before.c.balance), _covered,
              _step.c.traceparent)
    .select_from(_before.join(_step, sa.and_(_step.c.user_id == _before.c.user_id, _step.c.n == _before.c.n + 1))))
_decided = sa.select(_walk).where(_walk.c.n > 0).cte("decided")
# Each debited account's new balance (its last debit left the least) and each debit's ledger row.
_left = sa.select(_decided.c.user_id, sa.func.min(_decided.c.balance).label("balance")) \
    .where(_decided.c.debited).group_by(_decided.c.user_id).subquery("debited_balance")
_debited = sa.update(accounts) \
    .where(accounts.c.user_id == sa.any_(_claimed_ids), accounts.c.user_id == _left.c.user_id) \
    .values(balance=_left.c.balance, updated_at=NOW).cte("debited")
_ledger = sa.insert(account_movements).from_select(
    ["user_id", "kind", "order_id", "amount", "balance"],
    sa.select(_decided.c.user_id, sa.literal("debit"), _decided.c.order_id, _decided.c.amount, _decided.c.balance)
    .where(_decided.c.debited).order_by(_decided.c.order_id)).cte("ledger")
# The batch stored: a new request as decided (or `NEW` and unacked, its user busy elsewhere); a request seen
# again is unacked again unless decided here, keeps a status it had, and carries on in the trace of its latest
# message (if it has one).
_decided_now = _decided.c.order_id.is_not(None)
_store = pg_insert(inbox).from_select(
    ["order_id", "user_id", "amount", "traceparent", "status", "acked", "processed_at"],
    sa.select(_given.c.order_id, _given.c.user_id, _given.c.amount, _given.c.traceparent,
              sa.func.coalesce(_decided.c.status, OrderStatus.NEW.value), _decided_now, sa.case((_decided_now, NOW)))
    .select_from(_given.outerjoin(_decided, _decided.c.order_id == _given.c.order_id)).order_by(_given.c.order_id))
_stored_batch = _store.on_conflict_do_update(index_elements=[inbox.c.order_id], set_={
    "acked": _store.excluded.acked,
    "status": sa.case((_store.excluded.acked, _store.excluded.status), else_=inbox.c.status),
    "processed_at": sa.case((_store.excluded.acked, sa.func.coalesce(inbox.c.processed_at, NOW)),
                            else_=inbox.c.processed_at),
    "traceparent": sa.func.coalesce(_store.excluded.traceparent, inbox.c.traceparent)}).cte("stored")
# The claimed users' other rows marked acked with their status (a row is written by one part of a statement only).
_settled = sa.update(inbox).where(inbox.c.order_id == _decided.c.order_id,
                                  _decided.c.order_id != sa.all_(ids("order_ids"))) \
    .values(status=_decided.c.status, acked=True, processed_at=sa.func.coalesce(inbox.c.processed_at, NOW)) \
    .cte("settled")


# Every decided status queued for the Order Service, a user's together and in order, due for the relay in
# `due_in` seconds; and the results whose publish the broker confirmed since the last statement deleted.
_queued = sa.insert(outbox_ps).from_select(
    ["order_id", "status", "next_attempt_at", "traceparent"],
    sa.select(_decided.c.order_id, _decided.c.status, seconds_from_now(sa.bindparam("due_in")),
              _decided.c.traceparent).order_by(_decided.c.user_id, _decided.c.order_id)) \
    .returning(outbox_ps.c.id, outbox_ps.c.order_id, outbox_ps.c.status, outbox_ps.c.traceparent).cte("queued")
_done = sa.delete(outbox_ps).where(not_locked_elsewhere(outbox_ps.c.id, "done_ids")).cte("done")


_results = sa.select(_queued, _decided.c.user_id, _decided.c.amount) \
    .join_from(_queued, _decided, _decided.c.order_id == _queued.c.order_id).subquery("result")
QUEUED_FIELDS = ("id", "order_id", "status", "traceparent", "user_id", "amount")
# One row: how many users were candidates and claimed, and the queued `outbox_ps` rows (with the user and amount
# of each) as arrays, in the order they were queued. (A statement runs each data-modifying CTE, and each other
# CTE only where it is read.)
# The claim and the settling in one query (prepared: the statement of every payment).
SETTLE = Query(_claim, sa.select(
    sa.cast(sa.func.current_setting(sa.literal_column(CANDIDATES)), sa.Integer).label("candidates"),
    sa.select(sa.func.count()).select_from(_claimed).scalar_subquery().label("claimed"),
    *(sa.func.array_agg(aggregate_order_by(_results.c[name], _results.c.id)).label(name) for name in QUEUED_FIELDS))
    .add_cte(_debited).add_cte(_ledger).add_cte(_stored_batch).add_cte(_settled).add_cte(_done), prepare_as="settle")

LOCK_OUTBOX = Query(sa.select(outbox_ps.c.id, outbox_ps.c.order_id, outbox_ps.c.status, outbox_ps.c.traceparent)
                    .where(outbox_ps.c.next_attempt_at <= NOW)
                    .order_by(outbox_ps.c.id).limit(sa.bindparam("limit")).with_for_update(skip_locked=True))
DELETE_OUTBOX = Query(sa.delete(outbox_ps).where(not_locked_elsewhere(outbox_ps.c.id, "ids")))
DUE_NOW = Query(sa.update(outbox_ps).where(not_locked_elsewhere(outbox_ps.c.id, "ids")).values(next_attempt_at=NOW))


Row = dict[str, Any]


class CreditOrigin(NamedTuple):
    """Where a top-up came from, as its ledger row records it."""
    request_key: str | None = None  # its Idempotency-Key, else the request id the gateway gave it
    client_request_id: str | None = None  # the X-Request-ID its client sent (a label)
    principal: str | None = None  # who topped up: the token's subject


class Settled(NamedTuple):
    """What one `settle` did."""
    candidates: int  # users it tried to claim
    claimed: int  # users it claimed and settled (the others are being settled by another transaction)
    queued: list[Row]  # the `outbox_ps` rows it queued (`id`, `order_id`, `status`, `traceparent`, and the
    #                    request's `user_id` and `amount`), a user's together and in order


def in_lock_order(requests: Sequence[PaymentRequest]) -> list[PaymentRequest]:
    """One request per order, in `order_id` order: the order in which every writer locks inbox rows, so that
    concurrent batches cannot deadlock."""
    unique = {r.order_id: r for r in requests}
    return [unique[order_id] for order_id in sorted(unique)]


class PaymentRepository(Protocol):
    """The Payments Service's storage, the port its use cases are written against: each method does its part in
    the transaction of `cur` (`Database.run`). `PostgresPayments` is the product's; the unit tests' fake keeps rows
    in memory."""

    async def run_once(self, cur: Cursor, idempotent: IdempotentRequest | None,
                       work: Callable[..., Awaitable[Any]], *args: Any) -> Outcome:
        """`await work(cur, *args)` once per idempotency key: a replay is the first call's result. Raises
        `IdempotencyKeyReused` if the key came with another request."""
    async def forget_expired_keys(self, cur: Cursor, hours: float, limit: int) -> bool:
        """Delete up to `limit` idempotency keys older than `hours`; True if more may be left."""
    async def create_account(self, cur: Cursor, user_id: int) -> Row | None:
        """The new account, or None if the user already has one."""
    async def get_account(self, cur: Cursor, user_id: int, lock: bool = False) -> Row | None: ...
    async def credit(self, cur: Cursor, user_id: int, amount: Decimal, balance: Decimal, origin: CreditOrigin) -> Row:
        """Set the account's new `balance` after a credit of `amount` and write its ledger row, naming its
        origin."""
    async def list_movements(self, cur: Cursor, user_id: int, after: int, limit: int) -> list[Row]: ...
    async def store_requests(self, cur: Cursor, requests: Sequence[PaymentRequest]) -> None:
        """Insert new payment requests as `NEW`; a request seen before is marked unacked again."""
    async def settle(self, cur: Cursor, requests: Sequence[PaymentRequest], user_ids: Sequence[int], pick: int,
                     due_in: float, done_ids: Sequence[int] = ()) -> "Settled":
        """Store `requests` like `store_requests` and settle the pending requests of those users it can claim
        (of `user_ids`, and of up to `pick` more: those with the oldest unacked requests), by the rule: a
        user's requests in `order_id` order, a `NEW` one `FINISHED` and debited (with its ledger row) if the
        balance covers it, else `CANCELLED` (also with no account); one decided before keeps its status. Each
        settled request is acked and its status queued for the Order Service, due for the relay in `due_in`
        seconds. The `outbox_ps` rows `done_ids` (sends the broker confirmed) are deleted on the way."""
    async def lock_outbox(self, cur: Cursor, limit: int) -> list[Row]: ...
    async def delete_outbox(self, cur: Cursor, ids: list[int]) -> None:
        """Delete these rows, but those another transaction holds (a relay step sending them)."""
    async def make_due(self, cur: Cursor, ids: list[int]) -> None:
        """Make these rows due at once, but those another transaction holds."""
    async def backlog(self, cur: Cursor) -> dict[str, tuple[int, float]]:
        """{table: (rows waiting, age of the oldest in seconds)} for the unacked inbox and the outbox."""
    async def forget_processed(self, cur: Cursor, days: float, limit: int) -> bool:
        """Delete up to `limit` settled inbox rows processed more than `days` ago; True if more may be left."""


class PostgresPayments:
    """`PaymentRepository` on PostgreSQL: the statements above."""

    async def run_once(self, cur: Cursor, idempotent: IdempotentRequest | None,
                       work: Callable[..., Awaitable[Any]], *args: Any) -> Outcome:
        return await run_once(cur, idempotent, work, *args)

    async def forget_expired_keys(self, cur: Cursor, hours: float, limit: int) -> bool:
        return await forget_expired(cur, hours, limit)

    async def create_account(self, cur: Cursor, user_id: int) -> Row | None:
        return await fetch_one(cur, CREATE_ACCOUNT, user_id=user_id)

    async def get_account(self, cur: Cursor, user_id: int, lock: bool = False) -> Row | None:
        return await fetch_one(cur, LOCK_ACCOUNT if lock else GET_ACCOUNT, user_id=user_id)

    async def credit(self, cur: Cursor, user_id: int, amount: Decimal, balance: Decimal, origin: CreditOrigin) -> Row:
        credited = await fetch_one(cur, CREDIT, user_id=user_id, amount=amount, balance=balance,
                                   request_key=origin.request_key, client_request_id=origin.client_request_id,
                                   principal=origin.principal)
        assert credited is not None  # the caller holds the account's row lock: it exists
        return credited

    async def list_movements(self, cur: Cursor, user_id: int, after: int, limit: int) -> list[Row]:
        return await fetch_all(cur, LIST_MOVEMENTS, user_id=user_id, after=after, limit=limit)

    async def store_requests(self, cur: Cursor, requests: Sequence[PaymentRequest]) -> None:
        rows = in_lock_order(requests)
        await execute(cur, STORE_REQUESTS, order_ids=[r.order_id for r in rows], user_ids=[r.user_id for r in rows],
                      amounts=[r.amount for r in rows], traceparents=[r.trace for r in rows])

    async def settle(self, cur: Cursor, requests: Sequence[PaymentRequest], user_ids: Sequence[int], pick: int,
                     due_in: float, done_ids: Sequence[int] = ()) -> "Settled":
        rows = in_lock_order(requests)
        [row] = await fetch_all(cur, SETTLE, user_ids=list(user_ids), pick=pick, order_ids=[r.order_id for r in rows],
                                request_user_ids=[r.user_id for r in rows], amounts=[r.amount for r in rows],
                                traceparents=[r.trace for r in rows], due_in=due_in, done_ids=list(done_ids))
        queued = [dict(zip(QUEUED_FIELDS, values)) for values in zip(*(row[name] or () for name in QUEUED_FIELDS))]
        return Settled(row["candidates"], row["claimed"], queued)

    async def lock_outbox(self, cur: Cursor, limit: int) -> list[Row]:
        return await fetch_all(cur, LOCK_OUTBOX, limit=limit)

    async def delete_outbox(self, cur: Cursor, ids: list[int]) -> None:
        await execute(cur, DELETE_OUTBOX, ids=ids)

    async def make_due(self, cur: Cursor, ids: list[int]) -> None:
        await execute(cur, DUE_NOW, ids=ids)

    async def backlog(self, cur: Cursor) -> dict[str, tuple[int, float]]:
        return {"inbox": await pending_rows(cur, inbox.c.created_at, inbox.c.acked.is_(False)),
                "outbox_ps": await pending_rows(cur, outbox_ps.c.created_at)}

    async def forget_processed(self, cur: Cursor, days: float, limit: int) -> bool:
        return await delete_batch(cur, inbox.c.order_id, limit, inbox.c.acked, inbox.c.status != OrderStatus.NEW,
                                  older_than(inbox.c.processed_at, days * 86400))
