"""Payments Service use cases: accounts, the inbox (exactly-once debits) and the result outbox."""
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from common.broker.messages import PAYMENT_RESULTS, OrderStatus, PaymentRequest
from common.broker.publisher import Publisher
from common.db.database import Database, page
from common.db.idempotency import IdempotentRequest
from common.observability import tracing
from common.runtime.config import Settings
from common.web.errors import AccountExists, AccountNotFound, InvalidInput
from payment_svc.messaging import ResultDispatch, outgoing_results
from payment_svc.repo import CreditOrigin, Debit, PaymentRepository, Row

logger = logging.getLogger(__name__)

MAX_BALANCE = Decimal("999999999999.99")  # NUMERIC(14, 2)


async def create_account(db: Database, repo: PaymentRepository, user_id: int,
                         idempotent: IdempotentRequest | None = None) -> Row:
    """A new account with balance 0; never a second one for the same user."""

    async def create(cur: Any) -> Row:
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

    async def credit(cur: Any) -> Row:
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

    With `SettleAtOnce` the same transaction also settles the batch's users, saving the inbox worker's
    transaction and the hop to it, and their results are published after the commit. A user another
    transaction is settling at that moment is left to the inbox worker."""
    await dispatch.wait_for_room()
    users = sorted({r.user_id for r in requests})
    claimed, queued = await db.run(store_and_settle, repo, requests, users, dispatch)
    dispatch.send(queued)
    if claimed < len(users):
        dispatch.left_to_inbox_worker()
    return {}


async def store_and_settle(cur: Any, repo: PaymentRepository, requests: list[PaymentRequest], users: list[int],
                           dispatch: ResultDispatch) -> tuple[int, list[Row]]:
    await repo.store_requests(cur, requests)
    if not dispatch.settles_on_receipt:
        return len(users), []
    return await settle_users(cur, repo, users, dispatch.due_in)


@dataclass
class Settlement:
    statuses: dict[int, OrderStatus] = field(default_factory=dict)  # {order_id: final status} of every row decided
    debits: list[Debit] = field(default_factory=list)  # one per order paid, in order


def settle(rows: list[Row], balances: Mapping[int, Decimal]) -> Settlement:
    """Decide every unacked inbox row, in order, against `balances` ({user_id: balance}).

    A `NEW` row is debited if the balance covers it (`FINISHED`), else `CANCELLED` (also with no account).
    A row already decided keeps its status: a repeated request only re-sends it."""
    settlement, left = Settlement(), dict(balances)
    for row in rows:
        status = row["status"]
        if status == OrderStatus.NEW:
            user_id, amount = row["user_id"], row["amount"]
            balance = left.get(user_id)
            if balance is not None and balance >= amount:
                left[user_id] = balance - amount
                settlement.debits.append(Debit(user_id, row["order_id"], amount, left[user_id]))
                status = OrderStatus.FINISHED
            else:
                status = OrderStatus.CANCELLED
            # DEBUG like the Order Service's per-step lines (see order_svc.service.apply_payment_results).
            logger.debug("order_id=%s user %s amount %s: %s", row["order_id"], row["user_id"], row["amount"], status,
                         extra={"order_id": row["order_id"]})
        settlement.statuses[row["order_id"]] = status
    return settlement


async def settle_users(cur: Any, repo: PaymentRepository, user_ids: list[int],
                       due_in: float = 0) -> tuple[int, list[Row]]:
    """Settle the unacked requests of those of `user_ids` this transaction can claim; returns how many it claimed
    and the `outbox_ps` rows it queued (due for the relay in `due_in` seconds).

    Each user is claimed with an advisory lock so that one transaction (of any instance) settles a user's
    requests, in `order_id` order; the account rows are locked `FOR UPDATE` against concurrent top-ups."""
    claimed = await repo.claim_users(cur, user_ids)
    if not claimed:
        return 0, []
    rows = await repo.lock_unacked(cur, claimed)
    if not rows:
        return len(claimed), []
    # With tracing on, a span per request, in the trace its message came with; its result continues it.
    with tracing.current.steps("settle payment", [(row["order_id"], row["traceparent"]) for row in rows]) as traces:
        settlement = settle(rows, await repo.lock_accounts(cur, claimed))
        if settlement.debits:
            await repo.debit(cur, settlement.debits)
        return len(claimed), await repo.settle_inbox(cur, settlement.statuses, traces, due_in)


async def process_inbox(db: Database, repo: PaymentRepository, dispatch: ResultDispatch, batch_size: int) -> bool:
    """Settle the unacked requests of a batch of users in one transaction; True if more may wait."""
    taken, queued = await db.run(settle_waiting_users, repo, batch_size)
    if queued:
        dispatch.queued_for_relay()
    return taken >= batch_size


async def settle_waiting_users(cur: Any, repo: PaymentRepository, batch_size: int) -> tuple[int, list[Row]]:
    """(users taken, results queued) of one inbox step."""
    candidates = await repo.users_with_unacked(cur, batch_size)
    if not candidates:
        return 0, []
    claimed, queued = await settle_users(cur, repo, candidates)
    # None claimed: all are busy in other transactions, which settle them; do not spin on them.
    return (len(candidates) if claimed else 0), queued


async def relay_outbox(db: Database, repo: PaymentRepository, publisher: Publisher, batch_size: int) -> bool:
    """Publish one batch of payment results; delete each row the broker confirmed. True if the batch was full."""

    async def relay(cur: Any) -> int:
        rows = await repo.lock_outbox(cur, batch_size)
        if not rows:
            return 0
        confirmed = await publisher.publish_all(PAYMENT_RESULTS, outgoing_results(rows))
        if confirmed:
            await repo.delete_outbox(cur, confirmed)
        return len(rows)

    return await db.run(relay) >= batch_size


async def clean_up(db: Database, repo: PaymentRepository, settings: Settings) -> bool:
    """Forget one batch of expired idempotency keys and of inbox rows past retention; True if more are left."""
    keys_left = await db.run(repo.forget_expired_keys, settings.idempotency_key_hours, settings.batch_size)
    rows_left = await db.run(repo.forget_processed, settings.inbox_retention_days, settings.batch_size)
    return keys_left or rows_left
