"""Both fast paths and their "off" objects, on fake publishers and in-memory repositories."""
import asyncio
from decimal import Decimal

import pytest

from common.broker.messages import PaymentRequest, PaymentResult
from common.broker.publisher import PublishWindow
from common.db.idempotency import Outcome
from common.domain.errors import IdempotencyKeyReused
from common.runtime.config import load_settings
from order_svc import messaging as order_messaging
from order_svc import service as order_service
from order_svc.repo import FOR_THE_RELAY, OrderRequest, OutboxSchedule, Placement
from payment_svc import messaging as payment_messaging
from payment_svc import service as payment_service
from tests.unit.fakes import (
    FakeDatabase,
    FakePublisher,
    InMemoryOrders,
    InMemoryPayments,
    Kicks,
    cancelled_under_us,
    let_run,
)

ORDER = {"order_id": 7, "user_id": 3, "amount": Decimal("2.50"), "description": "", "status": "NEW"}


def send_at_once(publisher, connected=True):
    """A `SendAtOnce` over an outbox holding order 7's row, written due later as the fast path writes it."""
    kicks, db = Kicks(), FakeDatabase()
    repo = InMemoryOrders({7: 0})
    repo.outbox[7]["due"] = False
    dispatch = order_messaging.SendAtOnce(db, repo, PublishWindow(publisher), lambda: connected, 5.0, kicks)
    return dispatch, repo, db, kicks


@pytest.mark.gen_test
async def test_an_order_is_published_right_after_its_commit_and_counted_sent_once_confirmed():
    publisher = FakePublisher()
    dispatch, repo, db, kicks = send_at_once(publisher)
    schedule = await dispatch.schedule()
    assert schedule == (0, 5.0)  # not yet sent: a crash before the confirm leaves it a first send for the relay
    dispatch.placed(ORDER, schedule, None)
    await dispatch.window.drain()
    assert publisher.published == [("outbox_os", 7, PaymentRequest(7, 3, Decimal("2.50")).entry())]
    # The confirm costs no write of its own: the relay's next step counts the send.
    assert dispatch.sent() == [7] and db.calls == [] and kicks.count == 0
    await order_service.relay_outbox(db, repo, publisher, load_settings({}), dispatch)
    assert repo.outbox[7]["attempts"] == 1 and not repo.outbox[7]["due"] and dispatch.sent() == []
    assert [name for name, _ in db.calls] == ["relay"]


@pytest.mark.gen_test
async def test_an_unconfirmed_order_is_handed_to_the_relay_as_never_sent():
    dispatch, repo, _, kicks = send_at_once(FakePublisher(refused={7}))
    dispatch.placed(ORDER, await dispatch.schedule(), None)
    await dispatch.window.drain()
    assert repo.outbox[7]["attempts"] == 0 and repo.outbox[7]["due"] and kicks.count == 1


@pytest.mark.gen_test
async def test_with_the_broker_away_an_order_is_written_for_the_relay():
    dispatch, _, _, kicks = send_at_once(FakePublisher(), connected=False)
    schedule = await dispatch.schedule()
    assert schedule == FOR_THE_RELAY
    dispatch.placed(ORDER, schedule, None)
    assert kicks.count == 1 and dispatch.window.has_room()


@pytest.mark.gen_test
async def test_send_by_relay_writes_every_order_for_the_relay_and_publishes_nothing():
    dispatch = order_messaging.SendByRelay()
    assert await dispatch.schedule() == FOR_THE_RELAY
    dispatch.placed(ORDER, FOR_THE_RELAY, None)  # nothing to do: the relay's poll sends it


class RecordingDispatch:
    def __init__(self):
        self.placed_orders = []

    async def schedule(self):
        return OutboxSchedule(1, 5.0)

    def placed(self, order, schedule, trace):
        self.placed_orders.append((order["order_id"], schedule))


@pytest.mark.gen_test
async def test_an_order_is_placed_with_its_schedule_and_trace():
    written = []

    async def place_orders(request):
        written.append(request.placement)
        return Outcome({**ORDER, "user_id": request.placement.user_id}, replayed=False)
    order, replayed = await order_service.place_order(place_orders, RecordingDispatch(), 3, Decimal("2.50"), "")
    assert order["order_id"] == 7 and not replayed
    assert written == [Placement(3, Decimal("2.50"), "", (1, 5.0), None)]


def test_the_writer_dispatches_each_new_order_once_and_neither_a_replay_nor_a_refusal():
    dispatch = RecordingDispatch()
    requests = [OrderRequest(None, Placement(3, Decimal(1), "", OutboxSchedule(0, n), None)) for n in (1, 2, 3)]
    outcomes = [Outcome({"order_id": 7}, replayed=False), Outcome({"order_id": 6}, replayed=True),
                IdempotencyKeyReused("reused")]
    order_service.orders_committed(dispatch, requests, outcomes)
    assert dispatch.placed_orders == [(7, (0, 1))]


def settle_at_once(publisher, repo=None):
    relay, inbox, db = Kicks(), Kicks(), FakeDatabase()
    repo = repo or InMemoryPayments()
    return payment_messaging.SettleAtOnce(db, repo, PublishWindow(publisher), 5.0, relay, inbox), repo, relay, inbox


@pytest.mark.gen_test
async def test_settled_results_are_published_then_deleted_or_made_due():
    publisher = FakePublisher(refused={11})
    dispatch, repo, relay, _ = settle_at_once(publisher)
    dispatch.send([{"id": 10, "order_id": 1, "status": "FINISHED", "traceparent": None},
                   {"id": 11, "order_id": 2, "status": "CANCELLED", "traceparent": None}])
    await dispatch.window.drain()
    assert [(queue, entry) for queue, _, entry in publisher.published] == \
        [("outbox_ps", PaymentResult(1, "FINISHED").entry()), ("outbox_ps", PaymentResult(2, "CANCELLED").entry())]
    # The confirmed row is left for the next settling statement to delete; the other is due for the relay now.
    assert (dispatch.confirmed(), repo.deleted, repo.made_due, relay.count) == ([10], [], [11], 1)


def requests_of(*user_ids):
    return [PaymentRequest(order_id, user_id, Decimal(1)) for order_id, user_id in enumerate(user_ids, start=1)]


@pytest.mark.gen_test
async def test_the_consumer_settles_what_it_stores_and_leaves_busy_users_to_the_inbox_worker():
    repo = InMemoryPayments({1: Decimal(5), 2: Decimal(5)}, busy={2})  # user 2 is being settled elsewhere
    publisher = FakePublisher()
    dispatch, _, _, inbox = settle_at_once(publisher, repo)
    requests = requests_of(1, 2, 1)
    assert await payment_service.receive_requests(FakeDatabase(), repo, dispatch, requests) == {}
    await dispatch.window.drain()
    assert sorted(repo.inbox) == [1, 2, 3] and not repo.inbox[2]["acked"]  # all stored, user 2's left unsettled
    assert [(row["order_id"], row["due_in"]) for row in repo.outbox] == [(1, 5.0), (3, 5.0)]
    assert [mid for _, mid, _ in publisher.published] == [1, 2] and inbox.count == 1
    assert dispatch.confirmed() == [1, 2] and repo.deleted == []  # deleted by the next settling, not one by one
    repo.busy.clear()
    await payment_service.receive_requests(FakeDatabase(), repo, dispatch, requests)  # all claimed this time
    assert repo.deleted == [1, 2]
    await dispatch.window.drain()  # a send never started would be dropped with the test's loop, unawaited
    # The repeats of 1 and 3 only send their statuses again; each order was debited once.
    assert inbox.count == 1 and [row["order_id"] for row in repo.outbox[2:]] == [1, 3, 2]
    assert repo.accounts == {1: Decimal(3), 2: Decimal(4)}


@pytest.mark.gen_test
async def test_a_consumer_that_only_stores_leaves_the_requests_to_the_inbox_worker():
    repo = InMemoryPayments({1: Decimal(5)})
    requests = requests_of(1)
    assert await payment_service.receive_requests(FakeDatabase(), repo, payment_messaging.StoreOnly(), requests) == {}
    assert list(repo.inbox) == [1] and not repo.inbox[1]["acked"] and repo.outbox == []


async def still_waiting(task):
    """True if `task` is suspended, not finished: a coroutine that does not wait ends within these few steps."""
    await let_run()
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
    dispatch = order_messaging.SendAtOnce(FakeDatabase(), InMemoryOrders(), full_window(publisher), lambda: True,
                                          5.0, Kicks())
    schedule = asyncio.ensure_future(dispatch.schedule())
    assert await still_waiting(schedule)
    publisher.gate.set()
    assert await asyncio.wait_for(schedule, 10) == (0, 5.0)


@pytest.mark.gen_test
async def test_a_new_order_still_without_room_after_the_publish_timeout_is_left_to_the_relay():
    publisher = FakePublisher()
    dispatch = order_messaging.SendAtOnce(FakeDatabase(), InMemoryOrders(), full_window(publisher, timeout=0.05),
                                          lambda: True, 5.0, Kicks())
    assert await asyncio.wait_for(dispatch.schedule(), 10) == FOR_THE_RELAY
    publisher.gate.set()
    await dispatch.window.drain()  # the held publish ends with the test, not with its loop


@pytest.mark.gen_test
async def test_the_payments_consumer_stores_nothing_while_the_window_is_full_and_goes_on_once_it_has_room():
    repo = InMemoryPayments()
    publisher = FakePublisher()
    dispatch = payment_messaging.SettleAtOnce(FakeDatabase(), repo, full_window(publisher), 5.0, Kicks(), Kicks())
    requests = requests_of(1)
    received = asyncio.ensure_future(payment_service.receive_requests(FakeDatabase(), repo, dispatch, requests))
    assert await still_waiting(received) and repo.inbox == {}
    publisher.gate.set()
    assert await asyncio.wait_for(received, 10) == {} and list(repo.inbox) == [1]


class CancelledUnder(FakePublisher):
    """Its first send's channel closes under it: aiormq cancels the awaited confirm (not the sender)."""

    closed_once = False

    async def publish_all(self, queue, rows):
        if not self.closed_once:
            self.closed_once = True
            await cancelled_under_us()
        return await super().publish_all(queue, rows)


@pytest.mark.gen_test
async def test_a_send_cancelled_under_the_window_leaves_its_rows_to_the_relay_and_the_sender_goes_on():
    publisher = CancelledUnder()
    window = PublishWindow(publisher, limit=2)
    outcomes = []

    async def then(confirmed, unconfirmed):
        outcomes.append((confirmed, unconfirmed))
    window.send("q", [(1, {}, None)], then)
    await let_run()
    window.send("q", [(2, {}, None), (3, {}, None)], then)
    await window.drain()
    assert outcomes == [([2, 3], [])]  # row 1's send failed whole: its follow-up never ran, the relay sends it
    assert window.has_room()
