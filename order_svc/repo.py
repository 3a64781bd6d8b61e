"""The Order Service's tables and every SQL statement it runs (SQLAlchemy Core)."""
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from common.broker.messages import OrderStatus
from common.db.database import (
    NOW,
    Cursor,
    Query,
    execute,
    fetch_all,
    fetch_one,
    ids,
    not_locked_elsewhere,
    pending_rows,
    seconds_from_now,
    texts,
)
from common.db.idempotency import IdempotentRequest, Outcome, forget_expired, run_each_once, store_result
from common.domain.errors import IdempotencyKeyReused

metadata = sa.MetaData()

orders = sa.Table(
    "orders", metadata,
    sa.Column("order_id", sa.BigInteger, primary_key=True),
    sa.Column("user_id", sa.BigInteger),
    sa.Column("amount", sa.Numeric(14, 2)),
    sa.Column("description", sa.Text),
    sa.Column("status", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)

outbox_os = sa.Table(
    "outbox_os", metadata,
    sa.Column("order_id", sa.BigInteger, primary_key=True),
    sa.Column("user_id", sa.BigInteger),
    sa.Column("amount", sa.Numeric(14, 2)),
    sa.Column("attempts", sa.Integer),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("traceparent", sa.Text),
)

ORDER_FIELDS = (orders.c.order_id, orders.c.user_id, orders.c.amount, orders.c.description, orders.c.status)

# Orders and their outbox rows in one statement, so atomic even without BEGIN/COMMIT around it: a batch of
# requests placed together (group commit) is one row each of `given`, numbered in the order they came. Each
# outbox row counts `attempts` sends already and is due after `due_in` s; `traceparent` is the trace context of
# the request that placed it (NULL with tracing off). The ids are drawn first (MATERIALIZED: once per row, not
# once per reference) so that each returned order can be matched to its request by `n`.
_given = sa.func.unnest(sa.cast(sa.bindparam("user_ids"), postgresql.ARRAY(sa.BigInteger)),
                        sa.cast(sa.bindparam("amounts"), postgresql.ARRAY(sa.Numeric)), texts("descriptions"),
                        sa.cast(sa.bindparam("attempts"), postgresql.ARRAY(sa.Integer)),
                        sa.cast(sa.bindparam("due_ins"), postgresql.ARRAY(sa.Float)), texts("traceparents")) \
    .table_valued("user_id", "amount", "description", "attempts", "due_in", "traceparent", with_ordinality="n") \
    .render_derived(name="given")
_numbered = sa.select(sa.func.nextval("orders_order_id_seq").label("order_id"), *_given.c) \
    .cte("numbered").prefix_with("MATERIALIZED")
_placed = (sa.insert(orders).from_select(["order_id", "user_id", "amount", "description"],
                                         sa.select(_numbered.c.order_id, _numbered.c.user_id, _numbered.c.amount,
                                                   _numbered.c.description))
           .returning(*ORDER_FIELDS).cte("placed"))
_queued = sa.insert(outbox_os).from_select(
    ["order_id", "user_id", "amount", "attempts", "next_attempt_at", "traceparent"],
    sa.select(_numbered.c.order_id, _numbered.c.user_id, _numbered.c.amount, _numbered.c.attempts,
              seconds_from_now(_numbered.c.due_in), _numbered.c.traceparent)).cte("queued")
INSERT_ORDERS = Query(sa.select(_placed).join(_numbered, _numbered.c.order_id == _placed.c.order_id)
                      .order_by(_numbered.c.n).add_cte(_queued), prepare_as="insert_orders")

GET_ORDER = Query(sa.select(*ORDER_FIELDS).where(orders.c.order_id == sa.bindparam("order_id")))

_page = (sa.select(*ORDER_FIELDS).where(orders.c.order_id > sa.bindparam("after"))
         .order_by(orders.c.order_id).limit(sa.bindparam("limit")))
LIST_ORDERS = Query(_page)
LIST_USER_ORDERS = Query(_page.where(orders.c.user_id == sa.bindparam("user_id")))

LOCK_DUE_OUTBOX = Query(sa.select(outbox_os.c.order_id, outbox_os.c.user_id, outbox_os.c.amount, outbox_os.c.attempts,
                                  outbox_os.c.traceparent)
                        .where(outbox_os.c.next_attempt_at <= NOW)
                        .order_by(outbox_os.c.order_id)
                        .limit(sa.bindparam("limit"))
                        .with_for_update(skip_locked=True))

# Next resend: `first_delay` seconds, doubling per attempt, capped at `max_delay`.
_delay = sa.func.least(sa.bindparam("first_delay") * sa.func.power(2, outbox_os.c.attempts), sa.bindparam("max_delay"))
_order_ids = outbox_os.c.order_id == sa.any_(ids("order_ids"))
POSTPONE_OUTBOX = Query(sa.update(outbox_os).where(_order_ids)
                        .values(attempts=outbox_os.c.attempts + 1, next_attempt_at=seconds_from_now(_delay)))
# Rows whose immediate publish the broker confirmed: sent once, so the relay's next send of one is a resend,
# held back while the queue still holds messages (a Payments outage) instead of doubling the backlog. Only
# `attempts` changes: the row stays due `RESEND_DELAY` after it was written. Safe to run twice.
# (Rows another transaction holds are skipped: `not_locked_elsewhere`.)
_not_held = not_locked_elsewhere(outbox_os.c.order_id, "order_ids")
SENT_OUTBOX = Query(sa.update(outbox_os).where(_not_held, outbox_os.c.attempts == 0).values(attempts=1))
# Rows whose immediate publish was not confirmed: never sent after all, so due at once as first sends.
UNSENT_OUTBOX = Query(sa.update(outbox_os).where(_not_held).values(attempts=0, next_attempt_at=NOW))
# At start-up: rows never confirmed sent may be orders whose immediate publish died with a process (this one's
# predecessor, or a replica's: then the copy sent now is a harmless duplicate the inbox recognises).
UNSENT_DUE_NOW = Query(sa.update(outbox_os).where(outbox_os.c.attempts == 0, outbox_os.c.next_attempt_at > NOW)
                       .values(next_attempt_at=NOW))

# The results in one statement (atomic without BEGIN/COMMIT, and safe to repeat): set each still-`NEW` order's
# status, drop the outbox rows, return the ids of results about orders that do not exist, and NOTIFY the orders
# made final on `FINAL_ORDERS_CHANNEL`: one notification per batch, which PostgreSQL delivers at COMMIT, so a
# waiter woken by it never sees a status that is not durable (`order_svc.listener`). The payload names each order
# and its status's initial (`1201F,1202C`), or is `EVERY_WAITER` when that would be longer than
# `NOTIFY_PAYLOAD_LIMIT` (PostgreSQL's limit is 8,000 bytes; a batch of 200 ids of 10 digits takes 2,400). `notify`
# exists for the benchmark that measures what the NOTIFY costs (`bench.notify_cost`).
FINAL_ORDERS_CHANNEL = "order_final"
EVERY_WAITER = "*"  # too many orders to name: every process reads the orders its waiters hold again
NOTIFY_PAYLOAD_LIMIT = 4000
_results = sa.func.unnest(ids("order_ids"), sa.bindparam("statuses", type_=postgresql.ARRAY(sa.Text))) \
    .table_valued("order_id", "status").render_derived(name="result")
_finalized = (sa.update(orders).where(orders.c.order_id == _results.c.order_id, orders.c.status == OrderStatus.NEW)
              .values(status=_results.c.status, updated_at=NOW).returning(orders.c.order_id, orders.c.status)
              .cte("finalized"))
_dropped = sa.delete(outbox_os).where(_order_ids).returning(outbox_os.c.order_id).cte("dropped")
_named = sa.func.string_agg(sa.func.concat(_finalized.c.order_id, sa.func.left(_finalized.c.status, 1)), ",")
_notified = (sa.select(sa.func.pg_notify(FINAL_ORDERS_CHANNEL, sa.case(
                 (sa.func.octet_length(_named) <= NOTIFY_PAYLOAD_LIMIT, _named), else_=EVERY_WAITER)))
             .select_from(_finalized).having(sa.and_(sa.func.count() > 0, sa.bindparam("notify", True)))
             .cte("notified"))
_unknown = sa.func.unnest(ids("order_ids")).table_valued("order_id").render_derived(name="given")
# One row: the unknown ids (NULL if none), the orders made final (as the payload names them, NULL if none) and
# the NOTIFYs sent (0 or 1). All are columns of a SELECT without FROM, so every subquery runs: a CTE that is not a
# data-modifying statement runs only where it is read.
FINALIZE_ORDERS = Query(sa.select(
    sa.select(sa.func.array_agg(_unknown.c.order_id))
    .where(~sa.exists().where(orders.c.order_id == _unknown.c.order_id)).scalar_subquery().label("unknown"),
    sa.select(_named).select_from(_finalized).scalar_subquery().label("finalized"),
    sa.select(sa.func.count()).select_from(_notified).scalar_subquery().label("notified"))
    .add_cte(_finalized).add_cte(_dropped).add_cte(_notified), prepare_as="finalize_orders")

# The final statuses of the given orders (those still `NEW` left out): what waiters missed while no LISTEN
# connection was up.
FINAL_STATUSES = Query(sa.select(orders.c.order_id, orders.c.status)
                       .where(orders.c.order_id == sa.any_(ids("order_ids")), orders.c.status != OrderStatus.NEW))

_INITIALS = {status[0]: status for status in OrderStatus if status != OrderStatus.NEW}


def named_in(payload: str) -> dict[int, OrderStatus] | None:
    """{order id: final status} a `FINALIZE_ORDERS` notification names, or None for `EVERY_WAITER`. Raises
    `ValueError` for a payload it did not write."""
    if payload == EVERY_WAITER:
        return None
    return {int(named[:-1]): _INITIALS[named[-1]] for named in payload.split(",")}


class OutboxSchedule(NamedTuple):
    """When a new order's outbox row is due for the relay. `attempts` counts the sends the broker confirmed, so a
    row written 0 and never confirmed is a first send for the relay (never held back, no backoff), whether or
    not an immediate publish was tried: a process killed right after its COMMIT, or a COMMIT whose reply was lost,
    published nothing, and its order must not wait behind a resend's backoff."""
    attempts: int
    due_in: float  # seconds


FOR_THE_RELAY = OutboxSchedule(attempts=0, due_in=0)


class Placement(NamedTuple):
    """One request's order, and when its outbox row is due (`schedule`: sends already counted, seconds until due)
    in the trace context `trace`."""
    user_id: int
    amount: Decimal
    description: str
    schedule: OutboxSchedule
    trace: str | None


class OrderRequest(NamedTuple):
    """What one `POST /orders` asks the group commit to write: the (request, item) pair of `run_each_once`."""
    idempotent: IdempotentRequest | None
    placement: Placement


class Finalized(NamedTuple):
    unknown: set[int]  # results about orders that do not exist
    finals: dict[int, OrderStatus]  # the orders this statement made final, and their status


Row = dict[str, Any]


class OrderRepository(Protocol):
    """The Order Service's storage, the port its use cases are written against: each method does its part in the
    transaction of `cur` (`Database.run`). `PostgresOrders` is the product's; the unit tests' fake keeps rows in
    memory."""

    async def place_orders(self, cur: Cursor, requests: Sequence[OrderRequest]) -> list[Outcome | IdempotencyKeyReused]:
        """Each request's order and outbox row, once per idempotency key: its `Outcome`, or the refusal."""
    async def store_answer(self, cur: Cursor, idempotent: IdempotentRequest, order: Row) -> None:
        """`order` is the answer a replay of `idempotent`'s key gets from now on."""
    async def forget_expired_keys(self, cur: Cursor, hours: float, limit: int) -> bool:
        """Delete up to `limit` idempotency keys older than `hours`; True if more may be left."""
    async def get_order(self, cur: Cursor, order_id: int) -> Row | None: ...
    async def list_orders(self, cur: Cursor, user_id: int | None, after: int, limit: int) -> list[Row]: ...
    async def lock_due_outbox(self, cur: Cursor, limit: int) -> list[Row]:
        """Outbox rows due for (re)sending, locked so no other instance sends them meanwhile."""
    async def postpone_outbox(self, cur: Cursor, order_ids: list[int], first_delay: float, max_delay: float) -> None:
        """Schedule the next resend of each row: `first_delay` seconds, doubling per attempt, capped."""
    async def sent_outbox(self, cur: Cursor, order_ids: list[int]) -> None:
        """The broker confirmed these rows' immediate publish: the relay's next send of one is a resend."""
    async def unsent_outbox(self, cur: Cursor, order_ids: list[int]) -> None:
        """These rows' immediate publish was not confirmed: due at once, as first sends."""
    async def make_unsent_due(self, cur: Cursor) -> None:
        """Rows never confirmed sent are due at once (start-up)."""
    async def finalize_orders(self, cur: Cursor, order_ids: list[int], statuses: list[str],
                              notify: bool = True) -> Finalized:
        """Set each still-`NEW` order to its status, drop its outbox row and NOTIFY the orders made final (unless
        not `notify`)."""
    async def final_statuses(self, cur: Cursor, order_ids: list[int]) -> dict[int, OrderStatus]:
        """{order id: status} of those of the orders that are final."""
    async def backlog(self, cur: Cursor) -> dict[str, tuple[int, float]]:
        """{"outbox_os": (rows waiting for a payment result, age of the oldest in seconds)}."""


class PostgresOrders:
    """`OrderRepository` on PostgreSQL: the statements above."""

    async def place_orders(self, cur: Cursor, requests: Sequence[OrderRequest]) -> list[Outcome | IdempotencyKeyReused]:
        # One statement for all the new orders, whatever their idempotency keys replay or refuse.
        return await run_each_once(cur, requests, self.insert_orders)

    async def insert_orders(self, cur: Cursor, placements: Sequence[Placement]) -> list[Row]:
        """Insert the orders and their outbox rows in one statement (atomic on its own); returns the orders in the
        order of `placements`."""
        return await fetch_all(cur, INSERT_ORDERS, user_ids=[p.user_id for p in placements],
                               amounts=[p.amount for p in placements],
                               descriptions=[p.description for p in placements],
                               attempts=[p.schedule.attempts for p in placements],
                               due_ins=[p.schedule.due_in for p in placements],
                               traceparents=[p.trace for p in placements])

    async def store_answer(self, cur: Cursor, idempotent: IdempotentRequest, order: Row) -> None:
        await store_result(cur, idempotent, order)

    async def forget_expired_keys(self, cur: Cursor, hours: float, limit: int) -> bool:
        return await forget_expired(cur, hours, limit)

    async def get_order(self, cur: Cursor, order_id: int) -> Row | None:
        return await fetch_one(cur, GET_ORDER, order_id=order_id)

    async def list_orders(self, cur: Cursor, user_id: int | None, after: int, limit: int) -> list[Row]:
        if user_id is None:
            return await fetch_all(cur, LIST_ORDERS, after=after, limit=limit)
        return await fetch_all(cur, LIST_USER_ORDERS, user_id=user_id, after=after, limit=limit)

    async def lock_due_outbox(self, cur: Cursor, limit: int) -> list[Row]:
        return await fetch_all(cur, LOCK_DUE_OUTBOX, limit=limit)

    async def postpone_outbox(self, cur: Cursor, order_ids: list[int], first_delay: float, max_delay: float) -> None:
        await execute(cur, POSTPONE_OUTBOX, order_ids=order_ids, first_delay=first_delay, max_delay=max_delay)

    async def sent_outbox(self, cur: Cursor, order_ids: list[int]) -> None:
        await execute(cur, SENT_OUTBOX, order_ids=order_ids)

    async def unsent_outbox(self, cur: Cursor, order_ids: list[int]) -> None:
        await execute(cur, UNSENT_OUTBOX, order_ids=order_ids)

    async def make_unsent_due(self, cur: Cursor) -> None:
        await execute(cur, UNSENT_DUE_NOW)

    async def finalize_orders(self, cur: Cursor, order_ids: list[int], statuses: list[str],
                              notify: bool = True) -> Finalized:
        [row] = await fetch_all(cur, FINALIZE_ORDERS, order_ids=order_ids, statuses=statuses, notify=notify)
        # `finalized` names the orders themselves (never `EVERY_WAITER`), or is NULL when none was made final.
        finals = named_in(row["finalized"]) if row["finalized"] else {}
        return Finalized(set(row["unknown"] or ()), finals or {})

    async def final_statuses(self, cur: Cursor, order_ids: list[int]) -> dict[int, OrderStatus]:
        return {row["order_id"]: OrderStatus(row["status"])
                for row in await fetch_all(cur, FINAL_STATUSES, order_ids=order_ids)}

    async def backlog(self, cur: Cursor) -> dict[str, tuple[int, float]]:
        return {"outbox_os": await pending_rows(cur, outbox_os.c.created_at)}
