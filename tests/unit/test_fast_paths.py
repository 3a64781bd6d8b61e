"""Both fast paths and their "off" objects, on fake publishers and databases."""
import asyncio
from decimal import Decimal

import pytest

from common.broker.messages import PaymentRequest, PaymentResult
from common.broker.publisher import PublishWindow
from common.db.idempotency import Outcome
from order_svc import messaging as order_messaging
from order_svc import repo as order_repo
from order_svc import service as order_service
from payment_svc import messaging as payment_messaging
from payment_svc import service as payment_service
from tests.unit.fakes import FakeDatabase, FakePublisher, Kicks

ORDER = {"order_id": 7, "user_id": 3, "amount": Decimal("2.50"), "description": "", "status": "NEW"}


def send_at_once(publisher, connected=True):
    kicks = Kicks()
    db = FakeDatabase()
    dispatch = order_messaging.SendAtOnce(db, PublishWindow(publisher), lambda: connected, 5.0, kicks)
    return dispatch, db, kicks


@pytest.mark.gen_test
async def test_an_order_is_published_right_after_its_commit_and_counted_sent_once_confirmed(monkeypatch):
    sent = []

    async def sent_outbox(cur, ids):
        sent.extend(ids)
    monkeypatch.setattr(order_repo, "sent_outbox", sent_outbox)
    publisher = FakePublisher()
    dispatch, db, kicks = send_at_once(publisher)
    entry = await dispatch.entry()
    assert entry == (0, 5.0)  # not yet sent: a crash before the confirm leaves it a first send for the relay
    dispatch.placed(ORDER, entry, None)
    await dispatch.window.drain()
    assert publisher.published == [("outbox_os", 7, PaymentRequest(7, 3, Decimal("2.50")).entry())]
    assert sent == [7] and [name for name, _ in db.calls] == ["sent_outbox"] and kicks.count == 0


@pytest.mark.gen_test
async def test_an_unconfirmed_order_is_handed_to_the_relay_as_never_sent(monkeypatch):
    unsent = []

    async def unsent_outbox(cur, ids):
        unsent.extend(ids)
    monkeypatch.setattr(order_repo, "unsent_outbox", unsent_outbox)
    dispatch, _, kicks = send_at_once(FakePublisher(refused={7}))
    dispatch.placed(ORDER, await dispatch.entry(), None)
    await dispatch.window.drain()
    assert unsent == [7] and kicks.count == 1


@pytest.mark.gen_test
async def test_with_the_broker_away_an_order_is_written_for_the_relay():
    dispatch, _, kicks = send_at_once(FakePublisher(), connected=False)
    entry = await dispatch.entry()
    assert entry == order_messaging.FOR_THE_RELAY
    dispatch.placed(ORDER, entry, None)
    assert kicks.count == 1 and dispatch.window.has_room()


@pytest.mark.gen_test
async def test_relay_only_writes_every_order_for_the_relay_and_publishes_nothing():
    dispatch = order_messaging.RelayOnly()
    assert await dispatch.entry() == order_messaging.FOR_THE_RELAY
    dispatch.placed(ORDER, order_messaging.FOR_THE_RELAY, None)  # nothing to do: the relay's poll sends it


class RecordingDispatch:
    def __init__(self):
        self.placed_orders = []

    async def entry(self):
        return order_messaging.OutboxEntry(1, 5.0)

    def placed(self, order, entry, trace):
        self.placed_orders.append((order["order_id"], entry))


@pytest.mark.gen_test
async def test_a_new_order_is_dispatched_once_and_a_replayed_one_not_at_all():
    written = []

    async def place_orders(request):
        written.append(request.placement)
        return Outcome({**ORDER, "user_id": request.placement.user_id}, replayed=len(written) > 1)
    dispatch = RecordingDispatch()
    order, replayed = await order_service.place_order(place_orders, dispatch, 3, Decimal("2.50"), "")
    assert order["order_id"] == 7 and not replayed and dispatch.placed_orders == [(7, (1, 5.0))]
    assert written == [order_repo.Placement(3, Decimal("2.50"), "", (1, 5.0), None)]
    assert await order_service.place_order(place_orders, dispatch, 3, Decimal("2.50"), "") == (ORDER, True)
    assert len(dispatch.placed_orders) == 1


def settle_at_once(publisher):
    relay, inbox, db = Kicks(), Kicks(), FakeDatabase()
    return payment_messaging.SettleAtOnce(db, PublishWindow(publisher), 5.0, relay, inbox), db, relay, inbox


@pytest.mark.gen_test
async def test_settled_results_are_published_then_deleted_or_made_due(monkeypatch):
    done = {"delete_outbox": [], "make_due": []}
    for name in done:
        async def record(cur, ids, name=name):
            done[name].extend(ids)
        monkeypatch.setattr(payment_messaging.repo, name, record)
    publisher = FakePublisher(refused={11})
    dispatch, _, relay, _ = settle_at_once(publisher)
    dispatch.send([{"id": 10, "order_id": 1, "status": "FINISHED", "traceparent": None},
                   {"id": 11, "order_id": 2, "status": "CANCELLED", "traceparent": None}])
    await dispatch.window.drain()
    assert [(queue, entry) for queue, _, entry in publisher.published] == \
        [("outbox_ps", PaymentResult(1, "FINISHED").entry()), ("outbox_ps", PaymentResult(2, "CANCELLED").entry())]
    assert done == {"delete_outbox": [10], "make_due": [11]} and relay.count == 1


@pytest.mark.gen_test
async def test_the_consumer_settles_what_it_stores_and_leaves_busy_users_to_the_inbox_worker(monkeypatch):
    stored, settled = [], []

    async def store_requests(cur, requests):
        assert cur is not None
        stored.extend(requests)

    async def settle_users(cur, users, due_in):
        assert cur is not None
        settled.append((users, due_in))
        return (1 if len(settled) == 1 else len(users)), [{"id": 5, "order_id": 1, "status": "FINISHED",
                                                           "traceparent": None}]
    monkeypatch.setattr(payment_service.repo, "store_requests", store_requests)
    monkeypatch.setattr(payment_service, "settle_users", settle_users)
    deleted = []  # the follow-up of each confirmed result (on the fake's stand-in cursor it would fail, unseen)

    async def delete_outbox(cur, ids):
        deleted.extend(ids)
    monkeypatch.setattr(payment_messaging.repo, "delete_outbox", delete_outbox)
    publisher = FakePublisher()
    dispatch, _, _, inbox = settle_at_once(publisher)
    requests = [PaymentRequest(1, 1, Decimal(1)), PaymentRequest(2, 2, Decimal(1)), PaymentRequest(3, 1, Decimal(1))]
    assert await payment_service.receive_requests(FakeDatabase(), requests, dispatch) == {}
    await dispatch.window.drain()
    assert stored == requests and settled == [([1, 2], 5.0)]  # user 2 was busy elsewhere
    assert [mid for _, mid, _ in publisher.published] == [5] and inbox.count == 1
    await payment_service.receive_requests(FakeDatabase(), requests, dispatch)  # both claimed this time
    await dispatch.window.drain()  # a send never started would be dropped with the test's loop, unawaited
    assert inbox.count == 1 and len(publisher.published) == 2 and deleted == [5, 5]


@pytest.mark.gen_test
async def test_relay_only_consumer_just_stores_the_requests(monkeypatch):
    stored = []

    async def store_requests(cur, requests):
        stored.extend(requests)

    async def settle_users(cur, users, due_in):
        raise AssertionError("settled in the consumer with the fast path off")
    monkeypatch.setattr(payment_service.repo, "store_requests", store_requests)
    monkeypatch.setattr(payment_service, "settle_users", settle_users)
    requests = [PaymentRequest(1, 1, Decimal(1))]
    assert await payment_service.receive_requests(FakeDatabase(), requests, payment_messaging.RelayOnly()) == {}
    assert stored == requests


async def still_waiting(task):
    """True if `task` is suspended, not finished: a coroutine that does not wait ends within these few steps."""
    for _ in range(5):
        await asyncio.sleep(0)
    return not task.done()


def full_window(publisher, timeout=5.0):
    """A window of one message, full: its publish is held until `publisher.gate` is set."""
    publisher.gate.clear()
    publisher.timeout = timeout
    window = PublishWindow(publisher, limit=1)

    async def then(*_):
        pass
    window.send("q", [(0, {}, None)], then)
    return window


@pytest.mark.gen_test
async def test_a_new_order_waits_for_room_in_a_full_window_then_takes_the_fast_path():
    publisher = FakePublisher()
    dispatch = order_messaging.SendAtOnce(FakeDatabase(), full_window(publisher), lambda: True, 5.0, Kicks())
    entry = asyncio.ensure_future(dispatch.entry())
    assert await still_waiting(entry)
    publisher.gate.set()
    assert await asyncio.wait_for(entry, 10) == (0, 5.0)


@pytest.mark.gen_test
async def test_a_new_order_still_without_room_after_the_publish_timeout_is_left_to_the_relay():
    dispatch = order_messaging.SendAtOnce(FakeDatabase(), full_window(FakePublisher(), timeout=0.05),
                                          lambda: True, 5.0, Kicks())
    assert await asyncio.wait_for(dispatch.entry(), 10) == order_messaging.FOR_THE_RELAY


@pytest.mark.gen_test
async def test_the_payments_consumer_stores_nothing_while_the_window_is_full_and_goes_on_once_it_has_room(
        monkeypatch):
    stored = []

    async def store_requests(cur, requests):
        stored.extend(requests)

    async def settle_users(cur, users, due_in):
        return len(users), []
    monkeypatch.setattr(payment_service.repo, "store_requests", store_requests)
    monkeypatch.setattr(payment_service, "settle_users", settle_users)
    publisher = FakePublisher()
    dispatch = payment_messaging.SettleAtOnce(FakeDatabase(), full_window(publisher), 5.0, Kicks(), Kicks())
    requests = [PaymentRequest(1, 1, Decimal(1))]
    received = asyncio.ensure_future(payment_service.receive_requests(FakeDatabase(), requests, dispatch))
    assert await still_waiting(received) and stored == []
    publisher.gate.set()
    assert await asyncio.wait_for(received, 10) == {} and stored == requests
