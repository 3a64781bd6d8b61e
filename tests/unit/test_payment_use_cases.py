"""The Payments Service's use cases top to bottom on an in-memory repo: what each asks of the database, in
which transaction, and what it makes of the answers. (The SQL itself is pinned by the integration tests.)"""
import logging
from decimal import Decimal

import pytest

from common.broker.messages import PAYMENT_RESULTS, PaymentResult
from common.db.idempotency import IdempotentRequest, Outcome
from common.runtime.config import load_settings
from common.web.errors import AccountExists, AccountNotFound
from payment_svc import repo
from payment_svc import service as payment_service
from payment_svc.repo import CreditOrigin
from payment_svc.service import Debit
from tests.unit.fakes import FakeDatabase, FakePublisher, Kicks


class FakeRepo:
    """`payment_svc.repo` in memory: accounts, inbox rows, the ledger, the outbox. Users in `busy` are being
    settled by another transaction (their advisory lock is taken). Every function insists on a cursor."""

    def __init__(self, accounts=None, inbox=(), busy=()):
        self.accounts = dict(accounts or {})
        self.inbox = {row["order_id"]: {"acked": False, "traceparent": None, **row} for row in inbox}
        self.busy = set(busy)
        self.ledger, self.outbox, self.credits, self.deleted, self.locked, self.limits = [], [], [], [], [], []

    def install(self, monkeypatch):
        for name in ("claim_users", "lock_unacked", "lock_accounts", "set_balances", "record_debits",
                     "settle_inbox", "users_with_unacked", "get_account", "credit", "create_account",
                     "lock_outbox", "delete_outbox", "forget_processed", "list_movements"):
            monkeypatch.setattr(repo, name, self.checked(getattr(self, name)))
        return self

    @staticmethod
    def checked(function):
        async def call(cur, *args, **kwargs):
            assert cur is not None, f"{function.__name__} called without the transaction's cursor"
            return function(*args, **kwargs)
        return call

    def claim_users(self, user_ids):
        return [u for u in user_ids if u not in self.busy]

    def lock_unacked(self, user_ids):
        return sorted((dict(r) for r in self.inbox.values() if r["user_id"] in user_ids and not r["acked"]),
                      key=lambda r: r["order_id"])

    def lock_accounts(self, user_ids):
        return {u: self.accounts[u] for u in user_ids if u in self.accounts}

    def set_balances(self, balances):
        self.accounts.update(balances)

    def record_debits(self, debits):
        self.ledger.extend(debits)

    def settle_inbox(self, statuses, traces, due_in):
        queued = []
        for order_id, status in statuses.items():
            self.inbox[order_id].update(status=status, acked=True)
            queued.append({"id": len(self.outbox) + 1, "order_id": order_id, "status": status, "due_in": due_in,
                           "traceparent": None})
            self.outbox.append(queued[-1])
        return queued

    def users_with_unacked(self, limit):
        return sorted({r["user_id"] for r in self.inbox.values() if not r["acked"]})[:limit]

    def get_account(self, user_id, lock=False):
        self.locked.append(lock)
        return {"user_id": user_id, "balance": self.accounts[user_id]} if user_id in self.accounts else None

    def credit(self, user_id, amount, balance, origin):
        self.accounts[user_id] = balance
        self.credits.append((user_id, amount, balance, origin))
        return {"user_id": user_id, "balance": balance}

    def create_account(self, user_id):
        if user_id in self.accounts:
            return None
        self.accounts[user_id] = Decimal(0)
        return {"user_id": user_id, "balance": Decimal(0)}

    def lock_outbox(self, limit):
        self.limits.append(limit)
        return self.outbox[:limit]

    def list_movements(self, user_id, after, limit):
        self.limits.append(limit)
        return [m for m in self.ledger if m["user_id"] == user_id and m["id"] > after][:limit]

    def delete_outbox(self, ids):
        self.deleted.extend(ids)

    def forget_processed(self, days, limit):
        self.deleted.append(("inbox", days, limit))
        return False


def new(order_id, user_id, amount):
    return {"order_id": order_id, "user_id": user_id, "amount": Decimal(amount), "status": "NEW"}


@pytest.mark.gen_test
async def test_settling_users_debits_what_their_balances_cover_and_queues_every_result(monkeypatch):
    fake = FakeRepo({1: Decimal(10), 2: Decimal(1)}, [new(5, 1, "4"), new(6, 2, "3"), new(7, 1, "6")]).install(
        monkeypatch)
    claimed, queued = await payment_service.settle_users(object(), [1, 2], due_in=30)
    assert claimed == 2
    assert [(r["order_id"], r["status"], r["due_in"]) for r in queued] == \
        [(5, "FINISHED", 30), (6, "CANCELLED", 30), (7, "FINISHED", 30)]
    assert fake.accounts == {1: Decimal(0), 2: Decimal(1)}
    assert fake.ledger == [Debit(1, 5, Decimal(4), Decimal(6)), Debit(1, 7, Decimal(6), Decimal(0))]


@pytest.mark.gen_test
async def test_settling_users_that_are_all_busy_claims_none_and_touches_nothing(monkeypatch):
    fake = FakeRepo({1: Decimal(10)}, [new(5, 1, "4")], busy={1}).install(monkeypatch)
    assert await payment_service.settle_users(object(), [1]) == (0, [])
    assert fake.inbox[5]["acked"] is False and fake.accounts == {1: Decimal(10)}


@pytest.mark.gen_test
async def test_settling_a_claimed_user_with_nothing_unacked_queues_nothing(monkeypatch):
    FakeRepo({1: Decimal(10)}).install(monkeypatch)
    assert await payment_service.settle_users(object(), [1, 3]) == (2, [])


@pytest.mark.gen_test
async def test_an_inbox_step_reports_the_users_it_took_and_none_when_all_were_busy(monkeypatch):
    fake = FakeRepo({}, [new(5, 1, "4"), new(6, 2, "4")], busy={2}).install(monkeypatch)
    taken, queued = await payment_service.settle_waiting_users(object(), 10)
    assert taken == 2 and [(r["order_id"], r["status"]) for r in queued] == [(5, "CANCELLED")]
    assert await payment_service.settle_waiting_users(object(), 10) == (0, [])  # only busy user 2 is left
    fake.busy.clear()
    assert (await payment_service.settle_waiting_users(object(), 10))[0] == 1
    assert await payment_service.settle_waiting_users(object(), 10) == (0, [])  # nothing left at all


class Dispatch:
    def __init__(self):
        self.queued_for_relay = Kicks()


@pytest.mark.gen_test
async def test_processing_the_inbox_says_more_may_wait_exactly_when_a_full_batch_was_taken(monkeypatch):
    FakeRepo({}, [new(5, 1, "1"), new(6, 2, "1"), new(7, 3, "1")]).install(monkeypatch)
    dispatch = Dispatch()
    assert await payment_service.process_inbox(FakeDatabase(), dispatch, batch_size=2) is True
    assert dispatch.queued_for_relay.count == 1
    assert await payment_service.process_inbox(FakeDatabase(), dispatch, batch_size=2) is False
    assert await payment_service.process_inbox(FakeDatabase(), dispatch, batch_size=2) is False
    assert dispatch.queued_for_relay.count == 2  # not kicked for an empty step


@pytest.mark.gen_test
async def test_the_result_relay_publishes_to_the_results_queue_and_says_whether_its_batch_was_full(monkeypatch):
    fake = FakeRepo().install(monkeypatch)
    publisher = FakePublisher()
    assert await payment_service.relay_outbox(FakeDatabase(), publisher, batch_size=1) is False  # nothing to send
    fake.outbox = [{"id": 1, "order_id": 9, "status": "FINISHED", "traceparent": None}]
    assert await payment_service.relay_outbox(FakeDatabase(), publisher, batch_size=1) is True
    assert publisher.published == [(PAYMENT_RESULTS, 1, PaymentResult(9, "FINISHED").entry())]
    assert fake.deleted == [1] and fake.limits == [1, 1]


@pytest.mark.gen_test
async def test_a_page_of_movements_comes_with_the_cursor_of_the_next_and_no_account_is_not_found(monkeypatch):
    fake = FakeRepo({1: Decimal(3), 2: Decimal(0)}).install(monkeypatch)
    fake.ledger = [{"id": i, "user_id": 1} for i in (3, 5, 8)]
    assert await payment_service.list_movements(FakeDatabase(), 1, 0, 2) == (fake.ledger[:2], 5)
    assert await payment_service.list_movements(FakeDatabase(), 1, 5, 2) == (fake.ledger[2:], None)
    assert await payment_service.list_movements(FakeDatabase(), 2, 0, 2) == ([], None)  # an account, no movements
    with pytest.raises(AccountNotFound, match="^Account for user 9 not found.$"):
        await payment_service.list_movements(FakeDatabase(), 9, 0, 2)
    assert fake.limits == [3] * 4  # one row beyond the page says whether another follows: never unbounded


@pytest.mark.gen_test
async def test_clean_up_forgets_keys_and_inbox_rows_by_their_settings_and_says_if_more_are_left(monkeypatch):
    fake = FakeRepo().install(monkeypatch)
    calls = []

    async def forget_expired(cur, hours, limit):
        assert cur is not None
        calls.append((hours, limit))
        return len(calls) == 1  # more keys left after the first batch only
    monkeypatch.setattr(payment_service, "forget_expired", forget_expired)
    settings = load_settings({"IDEMPOTENCY_KEY_HOURS": "3", "INBOX_RETENTION_DAYS": "4", "BATCH_SIZE": "50"})
    assert await payment_service.clean_up(FakeDatabase(), settings) is True
    assert await payment_service.clean_up(FakeDatabase(), settings) is False
    assert calls == [(3, 50), (3, 50)] and fake.deleted == [("inbox", 4, 50), ("inbox", 4, 50)]


@pytest.mark.gen_test
async def test_account_use_cases_lock_for_a_top_up_keep_its_request_key_and_name_the_user(monkeypatch):
    fake = FakeRepo({1: Decimal(5)}).install(monkeypatch)
    origin = CreditOrigin("r-1", "client-1", "user-1")
    assert await payment_service.top_up(FakeDatabase(), 1, Decimal(2), origin=origin) == \
        {"user_id": 1, "balance": Decimal(7)}
    assert fake.credits == [(1, Decimal(2), Decimal(7), origin)] and fake.locked == [True]
    for call in (payment_service.top_up(FakeDatabase(), 8, Decimal(1)), payment_service.get_account(FakeDatabase(), 8)):
        with pytest.raises(AccountNotFound, match="^Account for user 8 not found.$"):
            await call
    with pytest.raises(AccountExists, match="^Account for user 1 already exists.$"):
        await payment_service.create_account(FakeDatabase(), 1)


@pytest.mark.gen_test
async def test_creating_an_account_passes_its_idempotency_key_on(monkeypatch):
    FakeRepo().install(monkeypatch)
    seen = []

    async def run_once(cur, idempotent, work, *args):
        seen.append(idempotent)
        return Outcome(await work(cur, *args), replayed=False)
    monkeypatch.setattr(payment_service, "run_once", run_once)
    key = IdempotentRequest("user-1", "k", "f")
    assert await payment_service.create_account(FakeDatabase(), 4, key) == {"user_id": 4, "balance": Decimal(0)}
    assert seen == [key]


def test_each_settled_request_is_logged_with_its_order_user_amount_and_status(caplog):
    caplog.set_level(logging.DEBUG, logger="payment_svc.service")
    payment_service.settle([new(5, 1, "4")], {1: Decimal(4)})
    (record,) = [r for r in caplog.records if r.name == "payment_svc.service"]
    assert (record.getMessage(), record.order_id) == ("order_id=5 user 1 amount 4: FINISHED", 5)
