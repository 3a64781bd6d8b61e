"""The fast path: a commit publishes its messages at once; the relay keeps only what that did not deliver.

The services here poll once an hour, so whatever reaches a queue was published by the fast path (or by the
relay's one run at start-up, before anything is placed)."""
import asyncio
import json
from decimal import Decimal

import pytest

from common.broker.connection import declare_queue
from common.broker.dead_letter_headers import dead_letter_queue
from common.broker.messages import ORDER_REQUESTS, PAYMENT_RESULTS, PaymentRequest, PaymentResult
from common.broker.publisher import MAX_SENDING
from common.observability.metrics import PUBLISH_FAILED
from common.runtime.config import load_settings
from harness.stack import free_port
from order_svc import repo as order_repo
from order_svc.bootstrap import OrderService
from order_svc.messaging import SendAtOnce
from payment_svc.bootstrap import PaymentService
from tests.conftest import eventually
from tests.integration.conftest import running, stopped
from tests.integration.http import request
from tests.integration.test_order_service import place

RESEND_DELAY = 30


def hourly_polls(run_env):
    return load_settings({**run_env, "ORDER_SVC_PORT": str(free_port()), "PAYMENT_SVC_PORT": str(free_port()),
                          "POLL_INTERVAL": "3600", "RESEND_DELAY": str(RESEND_DELAY)})


def service(io_loop, run_env, service_class):
    return running(io_loop, service_class(hourly_polls(run_env)))


@pytest.fixture
def order_service(io_loop, run_env):
    started = service(io_loop, run_env, OrderService)
    yield started
    stopped(io_loop, started)


@pytest.fixture
def payment_service(io_loop, run_env):
    started = service(io_loop, run_env, PaymentService)
    yield started
    stopped(io_loop, started)


async def take(broker, queue_name):
    """Every entry of the messages waiting in `queue_name`, taken out: [(order id, the entry as the body of a
    message of its own)], whether a message carried one entry or several."""
    queue = await broker.publisher.channel.get_queue(queue_name)
    taken = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        body = json.loads(message.body)
        for entry in body if isinstance(body, list) else [body]:
            entry.pop("traceparent", None)
            taken.append((entry["order_id"], json.dumps(entry).encode()))
    return taken


async def select(service, sql, *args):
    async def read(cur):
        await cur.execute(sql, args)
        return await cur.fetchall()
    return await service.db.run(read)


async def outbox_os_row(service, order_id):
    """(attempts, seconds until the relay may send it) of an order's outbox row."""
    rows = await select(service, "SELECT attempts, extract(epoch FROM next_attempt_at - clock_timestamp()) "
                                 "FROM outbox_os WHERE order_id = %s", order_id)
    return rows[0] if rows else None


@pytest.mark.gen_test(timeout=30)
async def test_new_order_is_published_at_once_and_due_for_the_relay_only_after_the_resend_delay(
        order_service, user_id):
    await take(order_service.broker, ORDER_REQUESTS)
    order_id = (await place(order_service, user_id, "2.50"))["order_id"]

    async def published():
        assert await take(order_service.broker, ORDER_REQUESTS) == \
            [(order_id, PaymentRequest(order_id, user_id, Decimal("2.50")).encode())]
    await eventually(published)
    order_service.wiring.workers["outbox"].kick()  # its next step counts the sends confirmed since the last

    async def counted_sent():
        attempts, due_in = await outbox_os_row(order_service, order_id)
        # Confirmed, so counted sent once: the relay's send would be a resend (held back during an outage),
        # still due only RESEND_DELAY after the order was written.
        assert attempts == 1 and RESEND_DELAY - 5 < due_in <= RESEND_DELAY
    await eventually(counted_sent)


@pytest.mark.gen_test(timeout=30)
async def test_replayed_order_is_not_published_again(order_service, user_id):
    await take(order_service.broker, ORDER_REQUESTS)
    key = {"Idempotency-Key": f"fast-{user_id}"}
    replies = [await request(order_service.port, "POST", "/orders", {"user_id": user_id, "amount": 1}, headers=key)
               for _ in range(3)]
    order_id = replies[0][1]["order_id"]
    assert all(reply == replies[0] for reply in replies)

    # Only this order's copies count: a service starting beside this one (other tests) re-sends their rows.
    seen = []

    async def published():
        seen.extend(mid for mid, _ in await take(order_service.broker, ORDER_REQUESTS))
        assert order_id in seen
    await eventually(published)
    seen.extend(mid for mid, _ in await take(order_service.broker, ORDER_REQUESTS))
    assert seen.count(order_id) == 1


@pytest.mark.gen_test(timeout=30)
async def test_unconfirmed_publish_hands_the_row_to_the_relay_at_once(order_service, user_id):
    channel = await order_service.broker.publisher.channel.get_underlay_channel()
    await channel.queue_delete(ORDER_REQUESTS)  # an unroutable message is returned, never confirmed
    failed_before = failed_publishes(ORDER_REQUESTS)
    try:
        order_id = (await place(order_service, user_id))["order_id"]

        async def handed_over():
            attempts, due_in = await outbox_os_row(order_service, order_id)
            assert attempts == 0 and due_in <= 0
            # ...because the immediate publish was tried and refused (with the relay asleep for an hour,
            # nothing else publishes): the fast path, not a plain insert for the relay.
            assert failed_publishes(ORDER_REQUESTS) > failed_before
        await eventually(handed_over)
    finally:
        await declare_queue(order_service.broker.publisher.channel, ORDER_REQUESTS)
    order_service.wiring.workers["outbox"].kick()

    async def relayed():
        assert order_id in [mid for mid, _ in await take(order_service.broker, ORDER_REQUESTS)]
    await eventually(relayed)
    assert (await outbox_os_row(order_service, order_id))[0] == 1


@pytest.mark.gen_test(timeout=30)
async def test_settled_result_is_published_at_once_and_its_outbox_row_deleted_by_the_next_settling(payment_service,
                                                                                                 user_id):
    await take(payment_service.broker, PAYMENT_RESULTS)
    order_id = user_id  # unique per test as well
    message = PaymentRequest(order_id, user_id, Decimal(1)).encode()
    await payment_service.broker.publisher.publish(ORDER_REQUESTS, message, order_id)

    # The run's database is shared: a result of an earlier test may be relayed into the queue meanwhile. Every
    # entry taken is kept, so ours cannot be taken out by one try and looked for in vain by the next.
    taken = []

    async def published():
        taken.extend(body for _, body in await take(payment_service.broker, PAYMENT_RESULTS))
        assert PaymentResult(order_id, "CANCELLED").encode() in taken
    await eventually(published)
    # The confirm costs no write of its own: the next request's settling statement deletes the row.
    assert await select(payment_service, "SELECT id FROM outbox_ps WHERE order_id = %s", order_id) != []
    await payment_service.broker.publisher.publish(ORDER_REQUESTS, PaymentRequest(order_id + 1, user_id,
                                                                                  Decimal(1)).encode(), order_id + 1)

    async def deleted():
        assert await select(payment_service, "SELECT id FROM outbox_ps WHERE order_id = %s", order_id) == []
    await eventually(deleted)


@pytest.mark.gen_test(timeout=30)
async def test_unconfirmed_result_is_made_due_for_the_relay_at_once(payment_service, user_id):
    channel = await payment_service.broker.publisher.channel.get_underlay_channel()
    await channel.queue_delete(PAYMENT_RESULTS)
    order_id = user_id
    failed_before = failed_publishes(PAYMENT_RESULTS)
    try:
        message = PaymentRequest(order_id, user_id, Decimal(1)).encode()
        await payment_service.broker.publisher.publish(ORDER_REQUESTS, message, order_id)

        async def handed_over():
            assert await select(payment_service, "SELECT next_attempt_at <= clock_timestamp() FROM outbox_ps "
                                                 "WHERE order_id = %s", order_id) == [(True,)]
            assert failed_publishes(PAYMENT_RESULTS) > failed_before  # tried at once, and refused
        await eventually(handed_over)
    finally:
        await declare_queue(payment_service.broker.publisher.channel, PAYMENT_RESULTS)
    payment_service.wiring.workers["outbox"].kick()

    async def relayed():
        assert await select(payment_service, "SELECT id FROM outbox_ps WHERE order_id = %s", order_id) == []
    await eventually(relayed)
    assert PaymentResult(order_id, "CANCELLED").encode() in \
        [body for _, body in await take(payment_service.broker, PAYMENT_RESULTS)]


@pytest.mark.gen_test(timeout=30)
async def test_immediate_publishes_are_bounded_by_a_window_that_frees_as_confirms_arrive(order_service):
    broker, queue = order_service.broker, f"window-{free_port()}"
    await declare_queue(broker.publisher.channel, queue)
    confirmed = []

    async def record(ids, _unconfirmed):
        confirmed.extend(ids)
    try:
        broker.window.send(queue, [(i, {}, None) for i in range(MAX_SENDING)], record)
        assert not broker.window.has_room()
        assert await broker.window.room(timeout=10)
        assert sorted(confirmed) == list(range(MAX_SENDING))
    finally:
        await delete_queue(broker, queue)


def hold_window_full(broker, queue):
    """Fill the service's publish window with real publishes to `queue` whose follow-up waits for the returned
    Event: the window stays full, whatever the broker's pace, until the test sets it."""
    release = asyncio.Event()

    async def held(*_):
        await release.wait()
    broker.window.send(queue, [(i, {}, None) for i in range(MAX_SENDING)], held)
    assert not broker.window.has_room()
    return release


async def pending_after(awaitable, seconds=1):
    """(task, still pending after `seconds`): a producer that does not wait for room ends well within them; one
    that waits cannot end before the test gives it room (the waits here are bounded far beyond)."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait([task], timeout=seconds)
    return task, not done


async def delete_queue(broker, queue):
    for name in (queue, dead_letter_queue(queue)):
        await broker.publisher.channel.queue_delete(name)


@pytest.mark.gen_test(timeout=90)
async def test_an_order_placed_while_the_window_is_full_waits_for_room_then_is_published_at_once(
        order_service, user_id):
    broker, queue = order_service.broker, f"window-{free_port()}"
    await declare_queue(broker.publisher.channel, queue)
    broker.publisher.timeout = 60  # how long an order may wait for room: far beyond this test's own waits
    release = hold_window_full(broker, queue)
    try:
        placing, waiting = await pending_after(place(order_service, user_id))
        assert waiting, "an order was placed past a full publish window"
        release.set()
        order_id = (await asyncio.wait_for(placing, 30))["order_id"]
    finally:
        release.set()
        await delete_queue(broker, queue)
    attempts, due_in = await outbox_os_row(order_service, order_id)
    # The wait ended with room: written for the fast path (due only after the resend delay; counted sent once
    # the broker confirms its publish).
    assert attempts in (0, 1) and due_in > RESEND_DELAY - 10

    async def published():
        assert order_id in [mid for mid, _ in await take(broker, ORDER_REQUESTS)]
    await eventually(published)


@pytest.mark.gen_test(timeout=90)
async def test_the_payments_consumer_stores_nothing_while_the_window_is_full_and_settles_once_it_has_room(
        payment_service, user_id):
    broker, queue, order_id = payment_service.broker, f"window-{free_port()}", user_id
    await declare_queue(broker.publisher.channel, queue)
    release = hold_window_full(broker, queue)

    async def stored():
        assert await select(payment_service, "SELECT status FROM inbox WHERE order_id = %s", order_id) == \
            [("CANCELLED",)]  # no account
    try:
        await broker.publisher.publish(ORDER_REQUESTS, PaymentRequest(order_id, user_id, Decimal(1)).encode(),
                                       order_id)
        storing, waiting = await pending_after(eventually(stored, timeout=30))
        assert waiting, "the consumer stored a batch past a full publish window"
        release.set()
        await asyncio.wait_for(storing, 40)
    finally:
        release.set()
        await delete_queue(broker, queue)

    async def published():
        results = [body for _, body in await take(broker, PAYMENT_RESULTS)]
        assert PaymentResult(order_id, "CANCELLED").encode() in results
    await eventually(published)


@pytest.mark.gen_test(timeout=30)
async def test_order_placed_while_the_broker_is_away_is_left_to_the_relay(order_service, user_id):
    await order_service.broker.connections[0].close()  # the publisher's connection, as after a broker crash
    failed_before = failed_publishes(ORDER_REQUESTS)
    order_id = (await place(order_service, user_id))["order_id"]
    attempts, due_in = await outbox_os_row(order_service, order_id)
    assert attempts == 0 and due_in <= 0

    async def relay_woken():
        # Its hourly poll is far away: the fast path kicked it, and it tried at once. Whether that publish fails
        # or waits for the robust connection's recovery and goes out (the row then counts one relay send)
        # depends on how far aio-pika's close has got: either shows the relay took the order.
        tried = failed_publishes(ORDER_REQUESTS) > failed_before
        assert tried or (await outbox_os_row(order_service, order_id))[0] == 1
    await eventually(relay_woken)


def failed_publishes(queue):
    return PUBLISH_FAILED.labels(queue)._value.get()


def crashed_after_commit(service, user_id):
    """Place an order as the fast path writes it, then publish nothing: a process killed right after COMMIT."""
    async def place_unpublished():
        window, settings = service.broker.window, service.settings
        repo = order_repo.PostgresOrders()
        schedule = await SendAtOnce(service.db, repo, window, service.broker.is_connected, settings.resend_delay,
                                    lambda: None).schedule()
        [order] = await service.db.run(repo.insert_orders, [order_repo.Placement(user_id, Decimal(1), "", schedule,
                                                                                None)])
        return order["order_id"]
    return place_unpublished()


@pytest.mark.gen_test(timeout=60)
async def test_an_order_whose_publish_died_with_the_process_goes_out_when_a_service_starts(
        io_loop, order_service, run_env, user_id):
    """The restarted process (here a second instance beside the first) sends it at once, not after 30 s."""
    await take(order_service.broker, ORDER_REQUESTS)
    order_id = await crashed_after_commit(order_service, user_id)
    successor = OrderService(hourly_polls(run_env))  # its relay polls hourly, the row is due in 30 s
    await successor.start()
    try:
        async def published():
            assert order_id in [mid for mid, _ in await take(successor.broker, ORDER_REQUESTS)]
        await eventually(published)
    finally:
        await successor.stop()
