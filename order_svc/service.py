"""Order Service use cases: plain async functions over a `Database` and a `Broker`."""
import logging

from common.errors import OrderNotFound
from common.idempotency import forget_expired, run_once
from common.messages import ORDER_REQUESTS, PaymentRequest
from order_svc import repo

logger = logging.getLogger(__name__)

class SendNow:
    """The fast path: an order's payment request is published as soon as its transaction commits, without
    waiting for the outbox relay. Its outbox row is written as sent once and due only `resend_delay` seconds
    later, so the relay re-sends it only if no payment result came back by then, like any other.

    While the broker has `MAX_SENDING` messages unconfirmed, a new order waits for room before it is placed:
    under overload orders are then taken in only as fast as they are sent on, and a backlog cannot build up
    inside the service. With the broker away, or still no room after the publish timeout, the order is
    placed for the relay instead."""

    def __init__(self, db, broker, resend_delay, kick_relay):
        self.db, self.broker, self.resend_delay, self.kick_relay = db, broker, resend_delay, kick_relay

    async def new_row(self):
        """(attempts, seconds until due) for the outbox row of an order about to be placed."""
        if self.broker.is_connected() and await self.broker.room(self.broker.publish_timeout):
            return 1, self.resend_delay
        return 0, 0

    def placed(self, order, attempts):
        """After the commit: publish the order written with `attempts` 1, or leave it to the relay."""
        if not attempts:
            self.kick_relay()
            return
        message = PaymentRequest(order["order_id"], order["user_id"], order["amount"])
        self.broker.publish_soon(ORDER_REQUESTS, [(message.order_id, message.encode())], self._hand_over_unconfirmed)

    async def _hand_over_unconfirmed(self, _confirmed, unconfirmed):
        if unconfirmed:
            # The broker is away: make the row due for the relay now rather than after the resend delay.
            await self.db.run(repo.unsent_outbox, unconfirmed)
            self.kick_relay()


async def place_order(db, user_id, amount, description, idempotent=None, send_now=None):
    """Create an order (`NEW`) and its outbox row in one transaction (once per idempotency key); with
    `send_now` (a `SendNow`), publish the new order's payment request right after the commit.

    Always inside BEGIN/COMMIT, even though the insert is one statement: only then can a connection lost
    at the end be told apart (lost during COMMIT: the outcome is unknown, never retry) from one lost
    before it (safe to retry)."""
    created = None
    attempts, due_in = await send_now.new_row() if send_now else (0, 0)

    async def insert(cur):
        nonlocal created
        created = await repo.insert_order(cur, user_id, amount, description, attempts, due_in)
        return created

    async def place(cur):
        nonlocal created
        created = None  # set by this attempt only if the key is new: a replay sends nothing again
        return await run_once(cur, idempotent, insert)

    order = await db.run(place)
    if created is not None:
        logger.info("order_id=%s placed for user %s, amount %s", order["order_id"], user_id, amount,
                    extra={"order_id": order["order_id"]})
        if send_now:
            send_now.placed(created, attempts)
    return order


async def get_order(db, order_id):
    order = await db.run(repo.get_order, order_id, transaction=False)
    if order is None:
        raise OrderNotFound(order_id)
    return order


async def list_orders(db, user_id, cursor, limit):
    """A page of orders (of one user, or all) after `cursor`; returns (orders, next cursor or None)."""
    rows = await db.run(repo.list_orders, user_id, cursor, limit + 1)
    page = rows[:limit]
    return page, (page[-1]["order_id"] if len(rows) > limit else None)


async def relay_outbox(db, broker, settings):
    """Publish one batch of due outbox rows; returns True if the batch was full (more may be due).

    The rows stay locked while publishing, so another instance cannot send them at the same time;
    each confirmed row is postponed by its resend delay, unconfirmed rows are retried at the next run.
    A resend is held back (and postponed with the same backoff) while the queue still holds messages
    no consumer has taken: the earlier copy is then still waiting there, and during a Payments outage
    resending would only multiply the backlog it has to work through when it returns."""

    async def relay(cur):
        rows = await repo.lock_due_outbox(cur, settings.batch_size)
        if not rows:
            return 0
        resends = [row["order_id"] for row in rows if row["attempts"]]
        if resends and await broker.ready_count(ORDER_REQUESTS):
            await repo.postpone_outbox(cur, resends, settings.resend_delay, settings.resend_delay_max)
            logger.debug("%d resends held back: %s still has messages waiting", len(resends), ORDER_REQUESTS)
            due = [row for row in rows if not row["attempts"]]
        else:
            due = rows
        messages = [(row["order_id"], PaymentRequest(row["order_id"], row["user_id"], row["amount"]).encode())
                    for row in due]
        confirmed = await broker.publish_all(ORDER_REQUESTS, messages) if messages else []
        if confirmed:
            await repo.postpone_outbox(cur, confirmed, settings.resend_delay, settings.resend_delay_max)
        for row in due:
            if row["attempts"]:
                logger.info("order_id=%s payment request re-sent (attempt %d)", row["order_id"], row["attempts"] + 1,
                            extra={"order_id": row["order_id"]})
        return len(rows)

    return await db.run(relay) >= settings.batch_size


async def apply_payment_results(db, results):
    """Record a batch of payment results; returns {index: reason} for results about unknown orders.

    A result for an order that is already final changes nothing (late or repeated confirmation)."""

    unknown = await db.run(repo.finalize_orders, [r.order_id for r in results], [r.status for r in results],
                           transaction=False)
    invalid = {i: f"unknown order {r.order_id}" for i, r in enumerate(results) if r.order_id in unknown}
    # DEBUG: the order's INFO line is "placed" (with the request id); one more INFO line per order and step
    # costs CPU at 1,000 orders/s. What needs attention (resends, dead letters, failures) stays INFO+.
    if logger.isEnabledFor(logging.DEBUG):
        for result in results:
            logger.debug("order_id=%s payment result %s", result.order_id, result.status,
                         extra={"order_id": result.order_id})
    return invalid


async def clean_up(db, settings):
    """Forget one batch of expired idempotency keys; True if more are left."""
    return await db.run(forget_expired, settings.idempotency_key_hours, settings.batch_size)
