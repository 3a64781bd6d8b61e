"""Payments Service use cases: accounts, the inbox (exactly-once debits) and the result outbox."""
import dataclasses
import logging
from decimal import Decimal

from common.broker.messages import PAYMENT_RESULTS, PaymentRequest
from common.broker.publisher import Publisher
from common.db.database import Cursor, Database, page
from common.db.idempotency import IdempotentRequest
from common.domain.errors import AccountExists, AccountNotFound, InvalidInput
from common.observability import tracing
from common.runtime.config import Settings
from payment_svc.messaging import ResultDispatch, outgoing_results
from payment_svc.repo import CreditOrigin, PaymentRepository, Row

logger = logging.getLogger(__name__)

MAX_BALANCE = Decimal("999999999999.99")  # NUMERIC(14, 2)


async def create_account(db: Database, repo: PaymentRepository, user_id: int,
                         idempotent: IdempotentRequest | None = None) -> Row:
    """A new account with balance 0; never a second one for the same user."""

    async def create(cur: Cursor) -> Row:
        account = await repo.create_account(cur, user_id)
        if account is None:
            raise AccountExists(user_id)
        return account

    account: Row = (await db.run(repo.run_once, idempotent, create)).result
    logger.info("account created for user %s", user_id)
    return account


async def get_account(db: Database, repo: PaymentRepository, user_id: int) -> Row:
    account = await db.run(repo.get_account, user_id, transaction=False)
    if account is None:
        raise AccountNotFound(user_id)
    return account


async def top_up(db: Database, repo: PaymentRepository, user_id: int, amount: Decimal,
                 idempotent: IdempotentRequest | None = None, origin: CreditOrigin = CreditOrigin()) -> Row:
    """Credit `amount` under a row lock, so it cannot interleave with a debit (once per idempotency key), and
    write its ledger row, which carries its `origin` (request key, the client's request id, who topped up)."""

    async def credit(cur: Cursor) -> Row:
        account = await repo.get_account(cur, user_id, lock=True)
        if account is None:
            raise AccountNotFound(user_id)
        balance = account["balance"] + amount
        if balance > MAX_BALANCE:
            raise InvalidInput(f"Balance would exceed {MAX_BALANCE}.")
        return await repo.credit(cur, user_id, amount, balance, origin)

    account: Row = (await db.run(repo.run_once, idempotent, credit)).result
    logger.info("user %s topped up by %s (by %s), balance %s", user_id, amount, origin.principal or "-",
                account["balance"])
    return account


async def list_movements(db: Database, repo: PaymentRepository, user_id: int, cursor: int,
                         limit: int) -> tuple[list[Row], int | None]:
    """A page of the account's ledger after `cursor`; returns (movements, next cursor or None).

    Raises `AccountNotFound` if the user has no account."""
    rows = await db.run(repo.list_movements, user_id, cursor, limit + 1, transaction=False)
    if not rows and await db.run(repo.get_account, user_id, transaction=False) is None:
        raise AccountNotFound(user_id)
    return page(rows, limit, "id")


async def receive_requests(db: Database, repo: PaymentRepository, dispatch: ResultDispatch,
                           requests: list[PaymentRequest]) -> dict[int, str]:
    """Store a batch of payment requests in the inbox (the consumer acks only after this commits); returns
    {index: reason} of requests to dead-letter (none: every well-formed request is stored).

    With `SettleAtOnce` the same statement also settles the batch's users (`PaymentRepository.settle`), saving
    the inbox worker's transaction and the hop to it, and their results are published after the commit. A user
    another transaction is settling at that moment is left to the inbox worker."""
    await dispatch.wait_for_room()
    if not dispatch.settles_on_receipt:
        await db.run(repo.store_requests, requests)
        return {}
    users = sorted({r.user_id for r in requests})
    done = dispatch.confirmed()
    # With tracing on, a span per request, in the trace its message came with; its result continues it.
    with tracing.current.steps("settle payment", [(r.order_id, r.trace) for r in requests]) as traces:
        traced = [dataclasses.replace(r, trace=trace or r.trace) for r, trace in zip(requests, traces)]
        settled = await db.run(repo.settle, traced, users, 0, dispatch.due_in, done)
    dispatch.deleted(done)
    log_results(settled.queued)
    dispatch.send(settled.queued)
    if settled.claimed < len(users):
        dispatch.left_to_inbox_worker()
    return {}


def log_results(queued: list[Row]) -> None:
    # DEBUG like the Order Service's per-step lines (see order_svc.service.apply_payment_results).
    if logger.isEnabledFor(logging.DEBUG):
        for row in queued:
            logger.debug("order_id=%s user %s amount %s: %s", row["order_id"], row["user_id"], row["amount"],
                         row["status"], extra={"order_id": row["order_id"]})


async def process_inbox(db: Database, repo: PaymentRepository, dispatch: ResultDispatch, batch_size: int) -> bool:
    """Settle the unacked requests of a batch of users (those waiting longest) in one statement; True if more may
    wait. Users all busy in other transactions, which settle them, count as none: the worker does not spin on
    them."""
    done = dispatch.confirmed()
    settled = await db.run(repo.settle, [], [], batch_size, 0, done)
    dispatch.deleted(done)
    log_results(settled.queued)
    if settled.queued:
        dispatch.queued_for_relay()
    return settled.claimed > 0 and settled.candidates >= batch_size


async def relay_outbox(db: Database, repo: PaymentRepository, publisher: Publisher, batch_size: int,
                       dispatch: ResultDispatch | None = None) -> bool:
    """Publish one batch of payment results; delete each row the broker confirmed. True if the batch was full.

    The step also deletes the results `dispatch` published and the broker confirmed since the last statement
    that did (one statement per poll when no request comes to carry them)."""
    done = dispatch.confirmed() if dispatch else []

    async def relay(cur: Cursor) -> int:
        if done:
            await repo.delete_outbox(cur, done)
        rows = await repo.lock_outbox(cur, batch_size)
        if not rows:
            return 0
        confirmed = await publisher.publish_all(PAYMENT_RESULTS, outgoing_results(rows))
        if confirmed:
            await repo.delete_outbox(cur, confirmed)
        return len(rows)

    full = await db.run(relay) >= batch_size
    if dispatch:
        dispatch.deleted(done)
    return full


async def clean_up(db: Database, repo: PaymentRepository, settings: Settings) -> bool:
    """Forget one batch of expired idempotency keys and of inbox rows past retention; True if more are left."""
    keys_left = await db.run(repo.forget_expired_keys, settings.idempotency_key_hours, settings.batch_size)
    rows_left = await db.run(repo.forget_processed, settings.inbox_retention_days, settings.batch_size)
    return keys_left or rows_left
