"""Both outbox relays over in-memory outboxes: what is sent, what is held back, what is marked confirmed."""
import pytest

from common.runtime.config import load_settings
from order_svc import service as order_service
from payment_svc import service as payment_service
from tests.unit.fakes import FakeDatabase, FakePublisher, InMemoryOrders, InMemoryPayments

SETTINGS = load_settings({"BATCH_SIZE": "3", "RESEND_DELAY": "5", "RESEND_DELAY_MAX": "60"})


@pytest.mark.gen_test
async def test_due_rows_are_published_and_only_the_confirmed_postponed():
    outbox = InMemoryOrders({1: 0, 2: 0})
    publisher = FakePublisher(refused={2})
    assert await order_service.relay_outbox(FakeDatabase(), outbox, publisher, SETTINGS) is False
    assert [mid for _, mid, _ in publisher.published] == [1, 2]
    assert outbox.postponed == [([1], 5.0, 60.0)]


@pytest.mark.gen_test
async def test_resends_are_held_back_while_the_queue_still_holds_messages():
    outbox = InMemoryOrders({1: 0, 2: 3, 3: 1})
    publisher = FakePublisher(waiting=12)
    assert await order_service.relay_outbox(FakeDatabase(), outbox, publisher, SETTINGS) is True  # a full batch
    assert [mid for _, mid, _ in publisher.published] == [1]  # first sends are never held back
    assert outbox.postponed == [([2, 3], 5.0, 60.0), ([1], 5.0, 60.0)]


@pytest.mark.gen_test
async def test_resends_go_out_once_the_queue_is_drained():
    publisher = FakePublisher(waiting=0)
    await order_service.relay_outbox(FakeDatabase(), InMemoryOrders({2: 3}), publisher, SETTINGS)
    assert [mid for _, mid, _ in publisher.published] == [2]


@pytest.mark.gen_test
async def test_payment_results_are_deleted_once_confirmed():
    outbox = InMemoryPayments()
    outbox.outbox = [{"id": i, "order_id": 100 + i, "status": "FINISHED", "traceparent": None} for i in (1, 2, 3)]
    publisher = FakePublisher(refused={2})
    assert await payment_service.relay_outbox(FakeDatabase(), outbox, publisher, batch_size=3) is True
    assert outbox.deleted == [1, 3]
