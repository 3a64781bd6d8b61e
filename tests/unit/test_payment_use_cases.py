"""The Payments Service's use cases top to bottom on its in-memory repository: what each asks of the database, in
which transaction, and what it makes of the answers. (The SQL itself is pinned by the integration tests.)"""
import logging
from decimal import Decimal

import pytest

from common.broker.messages import PAYMENT_RESULTS, PaymentResult
from common.db.idempotency import IdempotentRequest
from common.domain.errors import AccountExists, AccountNotFound, IdempotencyKeyReused
from common.runtime.config import load_settings
from payment_svc import service as payment_service
from payment_svc.repo import CreditOrigin
from tests.unit.fakes import FakeDatabase, FakePublisher, InMemoryPayments, Kicks


def new(order_id, user_id, amount):
    return {"order_id": order_id, "user_id": user_id, "amount": Decimal(amount), "status": "NEW"}


@pytest.mark.gen_test
async def test_an_inbox_step_reports_the_users_it_took_and_none_when_all_were_busy():
    repo = InMemoryPayments({}, [new(5, 1, "4"), new(6, 2, "4")], busy={2})
    dispatch = Dispatch()
    assert await payment_service.process_inbox(FakeDatabase(), repo, dispatch, batch_size=2) is True
    assert [(r["order_id"], r["status"]) for r in repo.outbox] == [(5, "CANCELLED")]
    # Only busy user 2 is left: a step that claims none says no more waits, so the worker does not spin on it.
    assert await payment_service.process_inbox(FakeDatabase(), repo, dispatch, batch_size=2) is False
    repo.busy.clear()
    assert await payment_service.process_inbox(FakeDatabase(), repo, dispatch, batch_size=1) is True
    assert await payment_service.process_inbox(FakeDatabase(), repo, dispatch, batch_size=1) is False
    assert [r["order_id"] for r in repo.outbox] == [5, 6] and dispatch.queued_for_relay.count == 2


class Dispatch:
    def __init__(self, confirmed=()):
        self.queued_for_relay = Kicks()
        self.done, self.gone = list(confirmed), []

    def confirmed(self):
        return list(self.done)

    def deleted(self, ids):
        self.gone.extend(ids)
        self.done = [i for i in self.done if i not in ids]


@pytest.mark.gen_test
async def test_processing_the_inbox_says_more_may_wait_exactly_when_a_full_batch_was_taken():
    repo = InMemoryPayments({}, [new(5, 1, "1"), new(6, 2, "1"), new(7, 3, "1")])
    dispatch = Dispatch()
    assert await payment_service.process_inbox(FakeDatabase(), repo, dispatch, batch_size=2) is True
    assert dispatch.queued_for_relay.count == 1
    assert await payment_service.process_inbox(FakeDatabase(), repo, dispatch, batch_size=2) is False
    assert await payment_service.process_inbox(FakeDatabase(), repo, dispatch, batch_size=2) is False
    assert dispatch.queued_for_relay.count == 2  # not kicked for an empty step


@pytest.mark.gen_test
async def test_the_result_relay_publishes_to_the_results_queue_and_says_whether_its_batch_was_full():
    repo = InMemoryPayments()
    publisher = FakePublisher()
    assert await payment_service.relay_outbox(FakeDatabase(), repo, publisher, batch_size=1) is False  # none to send
    repo.outbox = [{"id": 1, "order_id": 9, "status": "FINISHED", "traceparent": None}]
    assert await payment_service.relay_outbox(FakeDatabase(), repo, publisher, batch_size=1) is True
    assert publisher.published == [(PAYMENT_RESULTS, 1, PaymentResult(9, "FINISHED").entry())]
    assert repo.deleted == [1] and repo.limits == [1, 1]


@pytest.mark.gen_test
async def test_a_page_of_movements_comes_with_the_cursor_of_the_next_and_no_account_is_not_found():
    repo = InMemoryPayments({1: Decimal(3), 2: Decimal(0)})
    repo.movements = [{"id": i, "user_id": 1} for i in (3, 5, 8)]
    db = FakeDatabase()
    assert await payment_service.list_movements(db, repo, 1, 0, 2) == (repo.movements[:2], 5)
    assert await payment_service.list_movements(db, repo, 1, 5, 2) == (repo.movements[2:], None)
    assert await payment_service.list_movements(db, repo, 2, 0, 2) == ([], None)  # an account, no movements
    with pytest.raises(AccountNotFound, match="^Account for user 9 not found.$"):
        await payment_service.list_movements(db, repo, 9, 0, 2)
    assert repo.limits == [3] * 4  # one row beyond the page says whether another follows: never unbounded


@pytest.mark.gen_test
async def test_clean_up_forgets_keys_and_inbox_rows_by_their_settings_and_says_if_more_are_left():
    repo = InMemoryPayments()
    repo.expired_batches = 2
    settings = load_settings({"IDEMPOTENCY_KEY_HOURS": "3", "INBOX_RETENTION_DAYS": "4", "BATCH_SIZE": "50"})
    assert await payment_service.clean_up(FakeDatabase(), repo, settings) is True
    assert await payment_service.clean_up(FakeDatabase(), repo, settings) is False
    assert repo.forgotten == [(3, 50), (3, 50)] and repo.deleted == [("inbox", 4, 50), ("inbox", 4, 50)]


@pytest.mark.gen_test
async def test_account_use_cases_lock_for_a_top_up_keep_its_request_key_and_name_the_user():
    repo, db = InMemoryPayments({1: Decimal(5)}), FakeDatabase()
    origin = CreditOrigin("r-1", "client-1", "user-1")
    assert await payment_service.top_up(db, repo, 1, Decimal(2), origin=origin) == \
        {"user_id": 1, "balance": Decimal(7)}
    assert repo.credits == [(1, Decimal(2), Decimal(7), origin)] and repo.locked == [True]
    for call in (payment_service.top_up(db, repo, 8, Decimal(1)), payment_service.get_account(db, repo, 8)):
        with pytest.raises(AccountNotFound, match="^Account for user 8 not found.$"):
            await call
    with pytest.raises(AccountExists, match="^Account for user 1 already exists.$"):
        await payment_service.create_account(db, repo, 1)


@pytest.mark.gen_test
async def test_an_account_is_created_once_per_idempotency_key_and_a_key_reused_otherwise_is_refused():
    repo, db = InMemoryPayments(), FakeDatabase()
    key = IdempotentRequest("user-1", "k", "f")
    assert await payment_service.create_account(db, repo, 4, key) == {"user_id": 4, "balance": Decimal(0)}
    assert await payment_service.create_account(db, repo, 4, key) == {"user_id": 4, "balance": Decimal(0)}  # replay
    with pytest.raises(IdempotencyKeyReused):
        await payment_service.create_account(db, repo, 5, IdempotentRequest("user-1", "k", "other"))
    assert repo.accounts == {4: Decimal(0)}


@pytest.mark.gen_test
async def test_each_settled_request_is_logged_with_its_order_user_amount_and_status(caplog):
    caplog.set_level(logging.DEBUG, logger="payment_svc.service")
    repo = InMemoryPayments({1: Decimal(4)}, [new(5, 1, "4")])
    await payment_service.process_inbox(FakeDatabase(), repo, Dispatch(), batch_size=10)
    (record,) = [r for r in caplog.records if r.name == "payment_svc.service"]
    assert (record.getMessage(), record.order_id) == ("order_id=5 user 1 amount 4: FINISHED", 5)


@pytest.mark.gen_test
async def test_confirmed_results_are_deleted_by_the_next_inbox_step_or_relay_step_and_then_forgotten():
    repo, dispatch = InMemoryPayments(), Dispatch(confirmed=[7, 8])
    await payment_service.process_inbox(FakeDatabase(), repo, dispatch, batch_size=10)
    assert repo.deleted == [7, 8] and dispatch.gone == [7, 8] and dispatch.confirmed() == []
    dispatch.done = [9]
    await payment_service.relay_outbox(FakeDatabase(), repo, FakePublisher(), 10, dispatch)
    assert repo.deleted == [7, 8, 9] and dispatch.confirmed() == []
