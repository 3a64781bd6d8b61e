"""Both outbox relays over a fake outbox: what is sent, what is held back, what is marked confirmed."""
from decimal import Decimal

import pytest

from common.runtime.config import load_settings
from order_svc import repo as order_repo
from order_svc import service as order_service
from payment_svc import repo as payment_repo
from payment_svc import service as payment_service
from tests.unit.fakes import FakeDatabase, FakePublisher

SETTINGS = load_settings({"BATCH_SIZE": "3", "RESEND_DELAY": "5", "RESEND_DELAY_MAX": "60"})


class FakeOutboxOs:
    """outbox_os rows {order_id: attempts}, all due; records the postponements."""

    def __init__(self, attempts):
        self.attempts, self.postponed = dict(attempts), []

    async def lock_due_outbox(self, cur, limit):
        return [{"order_id": oid, "user_id": 1, "amount": Decimal(1), "attempts": n, "traceparent": None}
                for oid, n in sorted(self.attempts.items())][:limit]

    async def postpone_outbox(self, cur, order_ids, first_delay, max_delay):
        self.postponed.append((sorted(order_ids), first_delay, max_delay))


@pytest.fixture
def outbox_os(monkeypatch):
    def install(attempts):
        outbox = FakeOutboxOs(attempts)
        monkeypatch.setattr(order_repo, "lock_due_outbox", outbox.lock_due_outbox)
        monkeypatch.setattr(order_repo, "postpone_outbox", outbox.postpone_outbox)
        return outbox
    return install


@pytest.mark.gen_test
async def test_due_rows_are_published_and_only_the_confirmed_postponed(outbox_os):
    outbox = outbox_os({1: 0, 2: 0})
    publisher = FakePublisher(refused={2})
    assert await order_service.relay_outbox(FakeDatabase(), publisher, SETTINGS) is False
    assert [mid for _, mid, _ in publisher.published] == [1, 2]
    assert outbox.postponed == [([1], 5.0, 60.0)]


@pytest.mark.gen_test
async def test_resends_are_held_back_while_the_queue_still_holds_messages(outbox_os):
    outbox = outbox_os({1: 0, 2: 3, 3: 1})
    publisher = FakePublisher(waiting=12)
    assert await order_service.relay_outbox(FakeDatabase(), publisher, SETTINGS) is True  # a full batch
    assert [mid for _, mid, _ in publisher.published] == [1]  # first sends are never held back
    assert outbox.postponed == [([2, 3], 5.0, 60.0), ([1], 5.0, 60.0)]


@pytest.mark.gen_test
async def test_resends_go_out_once_the_queue_is_drained(outbox_os):
    outbox_os({2: 3})
    publisher = FakePublisher(waiting=0)
    await order_service.relay_outbox(FakeDatabase(), publisher, SETTINGS)
    assert [mid for _, mid, _ in publisher.published] == [2]


@pytest.mark.gen_test
async def test_payment_results_are_deleted_once_confirmed(monkeypatch):
    deleted = []

    async def lock_outbox(cur, limit):
        return [{"id": i, "order_id": 100 + i, "status": "FINISHED", "traceparent": None} for i in (1, 2, 3)]

    async def delete_outbox(cur, ids):
        deleted.extend(ids)
    monkeypatch.setattr(payment_repo, "lock_outbox", lock_outbox)
    monkeypatch.setattr(payment_repo, "delete_outbox", delete_outbox)
    publisher = FakePublisher(refused={2})
    assert await payment_service.relay_outbox(FakeDatabase(), publisher, batch_size=3) is True
    assert deleted == [1, 3]
