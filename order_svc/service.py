"""Order Service use cases: plain async functions over a `Database`, the service's `OrderRepository` and the
broker's `Publisher`."""
import logging
from collections.abc import Sequence
from decimal import Decimal

from common.broker.messages import ORDER_REQUESTS, PaymentRequest, PaymentResult
from common.broker.publisher import Publisher
from common.db.database import Cursor, Database, page
from common.db.group_commit import GroupCommit
from common.db.idempotency import IdempotentRequest, Outcome
from common.domain.errors import OrderNotFound
from common.observability import tracing
from common.runtime.config import Settings
from common.web.auth import Principal
from order_svc.messaging import RequestDispatch
from order_svc.repo import OrderRepository, OrderRequest, Placement, Row
from order_svc.waiters import Waiters

logger = logging.getLogger(__name__)


# The orders of concurrent requests, written together (`common.db.group_commit`, writing with
# `OrderRepository.place_orders`).
PlaceOrders = GroupCommit[OrderRequest, Outcome]


async def place_order(place_orders: PlaceOrders, dispatch: RequestDispatch, user_id: int, amount: Decimal,
                      description: str, idempotent: IdempotentRequest | None = None) -> Outcome:
    """Create an order (`NEW`) and its outbox row in one transaction (once per idempotency key), shared with the
    requests placed meanwhile; the group commit's writer hands the new orders to `dispatch` right after the
    COMMIT (`orders_committed`), so that `SendAtOnce` publishes them before any of their requests is answered.
    Returns the order, and whether it is a replay (the key's first answer).

    Always inside BEGIN/COMMIT, even though the insert is one statement: only then can a connection lost
    at the end be told apart (lost during COMMIT: the outcome is unknown, never retry) from one lost
    before it (safe to retry)."""
    schedule = await dispatch.schedule()
    trace = tracing.current.traceparent()  # None unless tracing is on: the outbox row's column stays NULL
    placed = await place_orders(OrderRequest(idempotent, Placement(user_id, amount, description, schedule, trace)))
    if not placed.replayed:
        order = placed.result
        logger.info("order_id=%s placed for user %s, amount %s", order["order_id"], user_id, amount,
                    extra={"order_id": order["order_id"]})
    return placed


def orders_committed(dispatch: RequestDispatch, requests: list[OrderRequest],
                     outcomes: Sequence[Outcome | BaseException]) -> None:
    """The group commit's `committed`: hand each order placed (not a replay: that one was sent the first time) to
    `dispatch`, with when its outbox row is due and its trace."""
    for request, outcome in zip(requests, outcomes):
        if isinstance(outcome, Outcome) and not outcome.replayed:
            dispatch.placed(outcome.result, request.placement.schedule, request.placement.trace)


async def get_order(db: Database, repo: OrderRepository, order_id: int, viewer: Principal) -> Row:
    """The order, if `viewer` may see it; another user's order is as unknown as one that does not exist, so
    order ids reveal nothing."""
    order = await db.run(repo.get_order, order_id, transaction=False)
    if order is None or not viewer.may_see(order["user_id"]):
        raise OrderNotFound(order_id)
    return order


async def list_orders(db: Database, repo: OrderRepository, user_id: int | None, cursor: int,
                      limit: int) -> tuple[list[Row], int | None]:
    """A page of orders (of one user, or all) after `cursor`; returns (orders, next cursor or None)."""
    return page(await db.run(repo.list_orders, user_id, cursor, limit + 1), limit, "order_id")


async def relay_outbox(db: Database, repo: OrderRepository, publisher: Publisher, settings: Settings,
                       dispatch: RequestDispatch | None = None) -> bool:
    """Publish one batch of due outbox rows; returns True if the batch was full (more may be due).

    The rows stay locked while publishing, so another instance cannot send them at the same time;
    each confirmed row is postponed by its resend delay, unconfirmed rows are retried at the next run.
    A resend is held back (and postponed with the same backoff) while the queue still holds messages
    no consumer has taken: the earlier copy is then still waiting there, and during a Payments outage
    resending would only multiply the backlog it has to work through when it returns.

    The step first counts the sends `dispatch` published and the broker confirmed since the last step
    (`RequestDispatch.sent`): one write per poll, not one per order."""
    sent = dispatch.sent() if dispatch else []

    async def relay(cur: Cursor) -> int:
        if sent:
            await repo.sent_outbox(cur, sent)
        rows = await repo.lock_due_outbox(cur, settings.batch_size)
        if not rows:
            return 0
        resends = [row["order_id"] for row in rows if row["attempts"]]
        if resends and await publisher.waiting_count(ORDER_REQUESTS):
            await repo.postpone_outbox(cur, resends, settings.resend_delay, settings.resend_delay_max)
            logger.debug("%d resends held back: %s still has messages waiting", len(resends), ORDER_REQUESTS)
            due = [row for row in rows if not row["attempts"]]
        else:
            due = rows
        outgoing = [(row["order_id"], PaymentRequest.entry_of(row), row["traceparent"]) for row in due]
        confirmed = await publisher.publish_all(ORDER_REQUESTS, outgoing) if outgoing else []
        if confirmed:
            await repo.postpone_outbox(cur, confirmed, settings.resend_delay, settings.resend_delay_max)
        for row in due:
            if row["attempts"]:
                logger.info("order_id=%s payment request re-sent (attempt %d)", row["order_id"], row["attempts"] + 1,
                            extra={"order_id": row["order_id"], "trace_id": tracing.trace_id_of(row["traceparent"])})
        return len(rows)

    full = await db.run(relay) >= settings.batch_size
    if dispatch:
        dispatch.counted(sent)
    return full


async def apply_payment_results(db: Database, repo: OrderRepository, waiters: Waiters,
                                results: list[PaymentResult]) -> dict[int, str]:
    """Record a batch of payment results; returns {index: reason} for results about unknown orders. This process's
    waiters for the orders made final are woken at once (committed: the statement ran alone); the others', and
    every replica's, by the statement's NOTIFY.

    A result for an order that is already final changes nothing (late or repeated confirmation)."""

    unknown, finals = await db.run(repo.finalize_orders, [r.order_id for r in results], [r.status for r in results],
                                   transaction=False)
    waiters.wake(finals, by="local")
    invalid = {i: f"unknown order {r.order_id}" for i, r in enumerate(results) if r.order_id in unknown}
    # DEBUG: the order's INFO line is "placed" (with the request id); one more INFO line per order and step
    # costs CPU at 1,000 orders/s. What needs attention (resends, dead letters, failures) stays INFO+.
    if logger.isEnabledFor(logging.DEBUG):
        for result in results:
            logger.debug("order_id=%s payment result %s", result.order_id, result.status,
                         extra={"order_id": result.order_id})
    return invalid


async def clean_up(db: Database, repo: OrderRepository, settings: Settings) -> bool:
    """Forget one batch of expired idempotency keys; True if more are left."""
    return await db.run(repo.forget_expired_keys, settings.idempotency_key_hours, settings.batch_size)
