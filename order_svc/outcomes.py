"""Order Service use cases of blocking reads: a request held until its order is final, the wake-ups of the held
ones, and the answer a waiting `POST /orders` leaves for its idempotency key (the registry: `order_svc.waiters`)."""
import logging

from common.broker.messages import FINAL_STATUSES
from common.db.database import Database
from common.db.idempotency import IdempotentRequest
from common.domain.errors import Unavailable
from order_svc.repo import FINAL_ORDERS_CHANNEL, OrderRepository, Row, named_in
from order_svc.waiters import CLIENT_LEFT, Waiter, Waiters

logger = logging.getLogger(__name__)


async def await_outcome(db: Database, repo: OrderRepository, waiters: Waiters, waiter: Waiter, order: Row,
                        seconds: int) -> Row:
    """`order` once it is final (woken by the notification of its result), else as it is after `seconds`.

    A waiter that could have missed its wake-up (`Waiter.unsure`) reads the order once more before waiting."""
    try:
        if waiter.unsure:
            order = await current(db, repo, order)
            if order["status"] in FINAL_STATUSES:
                waiters.wake({order["order_id"]: order["status"]}, by="reread")
        status = await waiters.wait(waiter, seconds)
    finally:
        waiters.remove(waiter)
    if status is not None:
        return {**order, "status": status}
    return order if waiter.outcome == CLIENT_LEFT else await current(db, repo, order)


async def current(db: Database, repo: OrderRepository, order: Row) -> Row:
    """`order` read again; as it was if the database cannot say now (the answer after a wait is not a 503)."""
    try:
        return await db.run(repo.get_order, order["order_id"], transaction=False) or order
    except Unavailable:
        return order


async def wake_waiters(db: Database, repo: OrderRepository, waiters: Waiters, payload: str) -> None:
    """Wake the waiters of the orders a notification names; one that names none (too many for a notification,
    or one this service did not send) makes them read their orders again."""
    try:
        finals = named_in(payload)
    except (ValueError, KeyError, IndexError):
        logger.warning("a notification on %s this service did not send: %r", FINAL_ORDERS_CHANNEL, payload[:200])
        finals = None
    if finals is None:
        await read_waited_orders(db, repo, waiters)
    else:
        waiters.wake(finals, by="notification")


async def read_waited_orders(db: Database, repo: OrderRepository, waiters: Waiters) -> None:
    """Wake the waiters whose orders became final while their notifications may have been missed (the LISTEN
    connection was down). Raises `Unavailable`."""
    waiters.missed()
    held = waiters.held()
    if held:
        waiters.wake(await db.run(repo.final_statuses, held, transaction=False), by="reread")


async def remember_answer(db: Database, repo: OrderRepository, idempotent: IdempotentRequest, order: Row) -> bool:
    """Store `order` (final after a wait) as the answer to `idempotent`'s key, so that a replay answers as this
    request does; False if the database could not take it (the answer must then be the one stored before)."""
    try:
        await db.run(repo.store_answer, idempotent, order, transaction=False)
        return True
    except Unavailable:
        logger.warning("order_id=%s: final status not stored for its idempotency key; answered NEW",
                       order["order_id"], extra={"order_id": order["order_id"]})
        return False
