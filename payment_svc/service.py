"""Payments Service use cases: accounts, the inbox (exactly-once debits) and the result outbox."""
import logging
from dataclasses import dataclass, field
from decimal import Decimal

from common.errors import AccountExists, AccountNotFound, InvalidInput
from common.idempotency import forget_expired, run_once
from common.messages import PAYMENT_RESULTS, PaymentResult
from payment_svc import repo

logger = logging.getLogger(__name__)

MAX_BALANCE = Decimal("999999999999.99")  # NUMERIC(14, 2)


async def create_account(db, user_id, idempotent=None):
    """A new account with balance 0; never a second one for the same user."""

    async def create(cur):
        account = await repo.create_account(cur, user_id)
        if account is None:
            raise AccountExists(user_id)
        return account

    account = await db.run(run_once, idempotent, create)
    logger.info("account created for user %s", user_id)
    return account


async def get_account(db, user_id):
    account = await db.run(repo.get_account, user_id, transaction=False)
    if account is None:
        raise AccountNotFound(user_id)
    return account


async def top_up(db, user_id, amount, idempotent=None, request_key=None):
    """Credit `amount` under a row lock, so it cannot interleave with a debit (once per idempotency key), and
    write its ledger row, which carries `request_key` (the idempotency key, else the request id)."""

    async def credit(cur):
        account = await repo.get_account(cur, user_id, lock=True)
        if account is None:
            raise AccountNotFound(user_id)
        balance = account["balance"] + amount
        if balance > MAX_BALANCE:
            raise InvalidInput(f"Balance would exceed {MAX_BALANCE}.")
        return await repo.credit(cur, user_id, amount, balance, request_key)

    account = await db.run(run_once, idempotent, credit)
    logger.info("user %s topped up by %s, balance %s", user_id, amount, account["balance"])
    return account


async def list_movements(db, user_id, cursor, limit):
    """A page of the account's ledger after `cursor`; returns (movements, next cursor or None).

    Raises `AccountNotFound` if the user has no account."""
    rows = await db.run(repo.list_movements, user_id, cursor, limit + 1, transaction=False)
    if not rows and await db.run(repo.get_account, user_id, transaction=False) is None:
        raise AccountNotFound(user_id)
    page = rows[:limit]
    return page, (page[-1]["id"] if len(rows) > limit else None)


def encode_result(row):
    return PaymentResult(row["order_id"], row["status"]).encode()


class SendNow:
    """The fast path: the consumer publishes the results it settled as soon as its transaction commits, without
    waiting for the outbox relay, and deletes the rows the broker confirmed. The rows are written due for the
    relay only `resend_delay` seconds later; a result not confirmed is made due at once. While the broker has
    `MAX_SENDING` messages unconfirmed, the consumer waits before it takes the next batch."""

    def __init__(self, db, broker, resend_delay, kick_relay):
        self.db, self.broker, self.resend_delay, self.kick_relay = db, broker, resend_delay, kick_relay

    async def room(self):
        await self.broker.room()

    def __call__(self, rows):
        messages = [(row["id"], encode_result(row)) for row in rows]
        self.broker.publish_soon(PAYMENT_RESULTS, messages, self._delete_confirmed)

    async def _delete_confirmed(self, confirmed, unconfirmed):
        if confirmed:
            await self.db.run(repo.delete_outbox, confirmed, transaction=False)
        if unconfirmed:
            await self.db.run(repo.make_due, unconfirmed, transaction=False)
            self.kick_relay()


async def receive_requests(db, requests, send_now=None):
    """Store a batch of payment requests in the inbox (the consumer acks only after this commits).

    With `send_now` (the fast path, a `SendNow`) the same transaction also settles the batch's users, saving
    the inbox worker's transaction and the hop to it, and their results are published after the commit.
    Returns False if some user was being settled by another transaction at that moment, whose requests are
    then left to the inbox worker."""
    claimed, queued = 0, []
    if send_now:
        await send_now.room()

    async def receive(cur):
        nonlocal claimed, queued
        await repo.store_requests(cur, requests)
        if send_now:
            claimed, queued = await settle_users(cur, users, send_now.resend_delay)

    users = sorted({r.user_id for r in requests})
    await db.run(receive)
    if queued:
        send_now(queued)
    return claimed == len(users)


@dataclass(frozen=True)
class Debit:
    """One ledger row to write: `order_id` took `amount` from `user_id`, leaving `balance`."""
    user_id: int
    order_id: int
    amount: Decimal
    balance: Decimal


@dataclass
class Settlement:
    statuses: dict = field(default_factory=dict)   # {order_id: final status} of every row decided
    balances: dict = field(default_factory=dict)   # {user_id: new balance} of the accounts debited
    debits: list = field(default_factory=list)     # a `Debit` per order paid, in order


def settle(rows, balances):
    """Decide every unacked inbox row, in order, against `balances` ({user_id: balance}).

    A `NEW` row is debited if the balance covers it (`FINISHED`), else `CANCELLED` (also with no account).
    A row already decided keeps its status: a repeated request only re-sends it."""
    settlement = Settlement()
    for row in rows:
        status = row["status"]
        if status == "NEW":
            user_id, amount = row["user_id"], row["amount"]
            balance = settlement.balances.get(user_id, balances.get(user_id))
            if balance is not None and balance >= amount:
                settlement.balances[user_id] = balance - amount
                settlement.debits.append(Debit(user_id, row["order_id"], amount, balance - amount))
                status = "FINISHED"
            else:
                status = "CANCELLED"
            # DEBUG like the Order Service's per-step lines (see order_svc.service.apply_payment_results).
            logger.debug("order_id=%s user %s amount %s: %s", row["order_id"], row["user_id"], row["amount"], status,
                         extra={"order_id": row["order_id"]})
        settlement.statuses[row["order_id"]] = status
    return settlement


async def settle_users(cur, user_ids, due_in=0):
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
    settlement = settle(rows, await repo.lock_accounts(cur, claimed))
    if settlement.debits:
        await repo.set_balances(cur, settlement.balances)
        await repo.record_debits(cur, settlement.debits)
    return len(claimed), await repo.settle_inbox(cur, settlement.statuses, due_in)


async def process_inbox(db, batch_size):
    """Settle the unacked requests of a batch of users in one transaction; True if more may wait."""

    async def process(cur):
        candidates = await repo.users_with_unacked(cur, batch_size)
        # None claimed: all are busy in other transactions, which settle them; do not spin on them.
        return len(candidates) if candidates and (await settle_users(cur, candidates))[0] else 0

    return await db.run(process) >= batch_size


async def relay_outbox(db, broker, batch_size):
    """Publish one batch of payment results; delete each row the broker confirmed. True if the batch was full."""

    async def relay(cur):
        rows = await repo.lock_outbox(cur, batch_size)
        if not rows:
            return 0
        confirmed = await broker.publish_all(PAYMENT_RESULTS, [(row["id"], encode_result(row)) for row in rows])
        if confirmed:
            await repo.delete_outbox(cur, confirmed)
        return len(rows)

    return await db.run(relay) >= batch_size


async def clean_up(db, settings):
    """Forget one batch of expired idempotency keys and of inbox rows past retention; True if more are left."""
    keys_left = await db.run(forget_expired, settings.idempotency_key_hours, settings.batch_size)
    rows_left = await db.run(repo.forget_processed, settings.inbox_retention_days, settings.batch_size)
    return keys_left or rows_left
