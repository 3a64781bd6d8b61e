"""Batches are handled in one call and only then acknowledged: one `multiple` ack, rejects first, in order; the
entries of a message of several are handled with the rest, and a refused one is dead-lettered alone."""
import asyncio

import pytest

from common.broker.consumer import BatchConsumer, Consumer
from common.domain.errors import InvalidMessage, Unavailable
from common.observability.metrics import CONSUMED, DEAD_LETTERED
from tests.conftest import eventually
from tests.unit.fakes import (
    PUBLISHERS,
    FakeConsuming,
    FakeDeadLetters,
    FakeMessage,
    Number,
    cancelled_under_us,
    received,
    unreadable,
)

DEAD = [("ack", False)]  # a dead letter's original, acked once its copy is confirmed


def consumer(handle_batch, dead_letters=None):
    return BatchConsumer("q", Number, handle_batch=handle_batch, batch_size=10,
                         dead_letters_via=dead_letters or FakeDeadLetters(), publishers=PUBLISHERS, requeue_pause=0)


async def returning(invalid):
    async def handle(items):
        handle.seen.append(items)
        return invalid
    handle.seen = []
    return handle


@pytest.mark.gen_test
async def test_a_batch_is_acked_with_one_multiple_ack_of_its_last_message():
    handle = await returning({})
    messages = [FakeMessage(tag) for tag in (1, 2, 3)]
    await consumer(handle).process([received(m, f"item{m.delivery_tag}") for m in messages])
    assert handle.seen == [["item1", "item2", "item3"]]
    assert [m.outcome for m in messages] == [[], [], [("ack", True)]]


@pytest.mark.gen_test
async def test_undecodable_and_refused_items_are_dead_lettered_and_the_rest_acked():
    handle = await returning({1: "unknown order"})
    messages = [FakeMessage(tag, message_id=str(tag)) for tag in (1, 2, 3, 4)]
    batch = [received(messages[0], "a"), unreadable(messages[1], "bad JSON"), received(messages[2], "b"),
             received(messages[3], "c")]
    batches = consumer(handle)
    await batches.process(batch)
    assert handle.seen == [["a", "b", "c"]]  # the undecodable one never reaches the handler
    assert [m.outcome for m in messages] == [[], DEAD, DEAD, [("ack", True)]]
    assert batches.dead_letters_via.copies == [("q.dead", "2", "bad JSON"), ("q.dead", "3", "unknown order")]


@pytest.mark.gen_test
async def test_when_the_last_item_is_refused_the_multiple_ack_is_of_the_last_one_taken():
    handle = await returning({1: "unknown order"})
    messages = [FakeMessage(tag, message_id=str(tag)) for tag in (1, 2)]
    await consumer(handle).process([received(messages[0], "a"), received(messages[1], "b")])
    assert [m.outcome for m in messages] == [[("ack", True)], DEAD]


@pytest.mark.gen_test
async def test_a_batch_of_only_undecodable_messages_never_calls_the_handler():
    handle = await returning({})
    message = FakeMessage(1, message_id="1")
    await consumer(handle).process([unreadable(message, "bad JSON")])
    assert handle.seen == [] and message.outcome == DEAD


@pytest.mark.gen_test
async def test_delivery_tags_that_restarted_are_acked_one_by_one():
    handle = await returning({})
    messages = [FakeMessage(tag) for tag in (7, 8, 1)]  # the channel was replaced mid-batch
    await consumer(handle).process([received(m, "x") for m in messages])
    assert [m.outcome for m in messages] == [[("ack", False)]] * 3


@pytest.mark.gen_test
async def test_a_failing_batch_is_requeued_once_then_dead_lettered():
    async def broken(items):
        raise ZeroDivisionError("a bug")
    first, again = FakeMessage(1), FakeMessage(2, redelivered=True)
    batches = consumer(broken)
    await batches.process([received(first, "x"), received(again, "y")])
    assert first.outcome == [("nack", True)]
    assert again.outcome == DEAD
    assert batches.dead_letters_via.copies == [("q.dead", "m", "processing failed twice")]


@pytest.mark.gen_test
async def test_an_unavailable_database_retries_the_batch_until_it_succeeds():
    calls = []

    async def flaky(items):
        calls.append(items)
        if len(calls) < 3:
            raise Unavailable("Database temporarily unavailable.")
        return {}
    message = FakeMessage(1)
    await consumer(flaky).process([received(message, "x")])
    assert len(calls) == 3 and message.outcome == [("ack", True)]


@pytest.mark.gen_test
async def test_nothing_is_acked_before_the_handler_returned():
    message = FakeMessage(1)

    async def handle(items):
        assert message.outcome == []
        return {}
    await consumer(handle).process([received(message, "x")])
    assert message.outcome == [("ack", True)]


@pytest.mark.gen_test
async def test_messages_are_batched_in_delivery_order_up_to_the_batch_size():
    seen = []

    async def handle(items):
        seen.append(items)
        return {}
    batches = BatchConsumer("q", Number, handle_batch=handle, batch_size=2, dead_letters_via=FakeDeadLetters(),
                            publishers=PUBLISHERS)
    messages = [FakeMessage(tag, body=b'{"n": %d}' % tag) for tag in range(1, 6)] + [FakeMessage(6, body=b"x")]
    for message in messages:  # all waiting before the loop runs: batches are as full as the size allows
        await batches.on_message(message)
    running = asyncio.create_task(batches.run())
    await eventually(lambda: assert_true(messages[-1].outcome))
    running.cancel()
    assert seen == [[1, 2], [3, 4], [5]]
    ack = [("ack", True)]
    assert [m.outcome for m in messages] == [[], ack, [], ack, ack, DEAD]


def assert_true(value):
    assert value


def consumer_tasks(queue):
    return [task for task in asyncio.all_tasks() if task.get_name() == f"consumer of {queue}"]


@pytest.mark.gen_test
async def test_a_consumer_feeds_its_queue_to_batches_that_dead_letter_on_its_publishing_channel_and_stops_them():
    queue = f"consumed-{id(object())}"
    channel, dead_letters = FakeConsuming(), FakeDeadLetters()
    consumer = Consumer(channel, dead_letters)
    seen = []

    async def handle(items):
        seen.append(items)
        return {1: "refused"} if len(items) > 1 else {}
    await consumer.consume(queue, Number, handle, batch_size=2, publishers=PUBLISHERS)
    deliver = channel.callbacks[queue][0]
    for tag in (1, 2, 3):
        await deliver(FakeMessage(tag, b'{"n": %d}' % (tag * 10), message_id=str(tag)))  # all before the first batch
    await eventually(lambda: assert_equal(CONSUMED.labels(queue)._value.get(), 2))
    assert seen == [[10, 20], [30]] and dead_letters.copies == [(f"{queue}.dead", "2", "refused")]
    assert DEAD_LETTERED.labels(queue)._value.get() == 1
    assert len(consumer_tasks(queue)) == 1
    await consumer.stop()
    assert consumer_tasks(queue) == []


def assert_equal(actual, expected):
    assert actual == expected


@pytest.mark.gen_test
@pytest.mark.parametrize("refused", [{2: "past the end"}, {-1: "from the end"}, {"0": "not an index"}])
async def test_a_handler_naming_an_item_its_batch_does_not_have_is_a_bug_and_the_consumer_goes_on(refused):
    calls = []

    async def handle(items):
        calls.append(items)
        return refused if len(calls) == 1 else {}
    batches = consumer(handle)
    batches.batch_size = 2
    fresh, again, later = (FakeMessage(1, body=b'{"n": 1}'), FakeMessage(2, body=b'{"n": 2}', redelivered=True),
                           FakeMessage(3, body=b'{"n": 3}', message_id="3"))
    for message in (fresh, again):
        await batches.on_message(message)
    running = asyncio.create_task(batches.run())
    await eventually(lambda: assert_true(again.outcome))
    # Nothing acked on an answer that cannot be trusted: the batch takes the bug path (requeued once, then kept).
    assert (fresh.outcome, again.outcome) == ([("nack", True)], DEAD)
    assert batches.dead_letters_via.copies == [("q.dead", "m", "processing failed twice")]
    await batches.on_message(later)
    await eventually(lambda: assert_true(later.outcome))
    assert not running.done() and later.outcome == [("ack", True)]
    running.cancel()


@pytest.mark.gen_test
async def test_a_refused_entry_of_a_message_of_several_is_dead_lettered_alone_and_the_message_acked_with_the_batch():
    handle = await returning({2: "unknown order"})  # the third item handled: "d", of the second message
    messages = [FakeMessage(tag, message_id=f"m{tag}") for tag in (1, 2, 3)]
    batches = consumer(handle)
    await batches.process([received(messages[0], "a", InvalidMessage("entry 1: 'order_id' must be ..."), "c"),
                           received(messages[1], "d", "e"), received(messages[2], "f")])
    assert handle.seen == [["a", "c", "d", "e", "f"]]  # the malformed entry never reaches the handler
    assert batches.dead_letters_via.copies == [("q.dead", "m1#1", "entry 1: 'order_id' must be ..."),
                                               ("q.dead", "m2#0", "unknown order")]
    # Each dead letter carries its entry alone, as it came.
    assert batches.dead_letters_via.bodies == [b'{"entry": "entry 1: \'order_id\' must be ..."}', b'{"entry": "d"}']
    assert [m.outcome for m in messages] == [[], [], [("ack", True)]]  # one multiple ack for all three


@pytest.mark.gen_test
async def test_a_message_of_several_whose_entry_could_not_be_dead_lettered_is_requeued_whole():
    handle = await returning({})
    messages = [FakeMessage(tag) for tag in (1, 2)]
    await consumer(handle, FakeDeadLetters(refuse=True)).process(
        [received(messages[0], "a"), received(messages[1], "b", InvalidMessage("entry 1: bad"))])
    # Not acked: its entries come again (the processed one deduplicated downstream), so nothing is lost.
    assert [m.outcome for m in messages] == [[("ack", True)], [("nack", True)]]


@pytest.mark.gen_test
async def test_a_failing_batch_requeues_a_message_of_several_whole():
    async def broken(items):
        raise ZeroDivisionError("a bug")
    message = FakeMessage(1)
    await consumer(broken).process([received(message, "x", "y", InvalidMessage("entry 2: bad"))])
    assert message.outcome == [("nack", True)]


@pytest.mark.gen_test
async def test_a_batch_takes_whole_messages_until_it_holds_the_batch_size_in_entries():
    seen = []

    async def handle(items):
        seen.append(items)
        return {}
    batches = BatchConsumer("q", Number, handle_batch=handle, batch_size=5, dead_letters_via=FakeDeadLetters(),
                            publishers=PUBLISHERS)
    messages = [FakeMessage(tag, body=b'[{"n": %d}, {"n": %d}, {"n": %d}]' % (tag, tag, tag)) for tag in (1, 2, 3)]
    for message in messages:
        await batches.on_message(message)
    running = asyncio.create_task(batches.run())
    await eventually(lambda: assert_true(messages[-1].outcome))
    running.cancel()
    assert seen == [[1, 1, 1, 2, 2, 2], [3, 3, 3]]
    assert [m.outcome for m in messages] == [[], [("ack", True)], [("ack", True)]]


@pytest.mark.gen_test(timeout=10)
async def test_a_consumer_whose_database_stays_away_gives_back_what_it_holds_and_comes_back():
    database = {"up": False}

    async def handle(items):
        if not database["up"]:
            raise Unavailable("the database does not answer")
        handle.seen.extend(items)
        return {}
    handle.seen = []

    async def probe():
        if not database["up"]:
            raise Unavailable("the database does not answer")
    consuming = FakeConsuming()
    batches = BatchConsumer("q", Number, handle_batch=handle, batch_size=1, dead_letters_via=FakeDeadLetters(),
                            publishers=PUBLISHERS, consuming=consuming, probe=probe, step_aside_after=0.3)
    await batches.start()
    messages = [FakeMessage(tag) for tag in (1, 2, 3)]
    for message in messages:  # one in the batch, two prefetched behind it
        batches.pending.put_nowait(received(message, f"item{message.delivery_tag}"))
    running = asyncio.ensure_future(batches.run())
    try:
        async def given_back():
            assert consuming.events == ["consume", "cancel"]
            assert [m.outcome for m in messages] == [[("nack", True)]] * 3
        await eventually(given_back, timeout=5)
        database["up"] = True

        async def consuming_again():
            assert consuming.events == ["consume", "cancel", "consume"]
        await eventually(consuming_again, timeout=5)
        assert handle.seen == []  # nothing held: the broker delivers them again
    finally:
        running.cancel()


@pytest.mark.gen_test(timeout=10)
async def test_without_a_probe_a_batch_waits_for_its_database_however_long():
    attempts = []

    async def handle(items):
        attempts.append(items)
        if len(attempts) < 4:
            raise Unavailable("the database does not answer")
        return {}
    message = FakeMessage(1)
    batches = BatchConsumer("q", Number, handle_batch=handle, batch_size=1, dead_letters_via=FakeDeadLetters(),
                            publishers=PUBLISHERS, step_aside_after=0.01)
    await batches.process([received(message, "item")])
    assert len(attempts) == 4 and message.outcome == [("ack", True)]


class ChannelClosedUnder(FakeMessage):
    """Its channel closes while the ack is written: aiormq cancels the write's future (not the consumer)."""

    def ack(self, multiple=False):
        return cancelled_under_us()


class DeadLettersClosedUnder(FakeDeadLetters):
    async def publish(self, message, routing_key, mandatory, timeout):
        await cancelled_under_us()


@pytest.mark.gen_test
async def test_a_channel_closed_under_an_ack_or_a_dead_letter_is_a_broker_failure_not_the_consumers_end(caplog):
    handle = await returning({})
    await consumer(handle).process([received(ChannelClosedUnder(1), "item1")])
    assert "could not acknowledge message" in caplog.text
    refused = FakeMessage(2)
    await consumer(await returning({0: "unknown order"}), DeadLettersClosedUnder()).process([received(refused, "x")])
    assert refused.outcome == [("nack", True)]  # given back: it comes again
    assert asyncio.current_task().cancelling() == 0
