"""Batches are handled in one call and only then acknowledged: one `multiple` ack, rejects first, in order."""
import asyncio

import pytest

from common.consumer import BatchConsumer
from common.errors import InvalidMessage, Unavailable
from tests.conftest import eventually
from tests.unit.fakes import FakeMessage


def consumer(handle_batch):
    return BatchConsumer("q", decode=lambda body: body, handle_batch=handle_batch, batch_size=10)


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
    await consumer(handle).process([(m, f"item{m.delivery_tag}") for m in messages])
    assert handle.seen == [["item1", "item2", "item3"]]
    assert [m.outcome for m in messages] == [[], [], [("ack", True)]]


@pytest.mark.gen_test
async def test_undecodable_and_refused_items_are_dead_lettered_and_the_rest_acked():
    handle = await returning({1: "unknown order"})
    messages = [FakeMessage(tag) for tag in (1, 2, 3, 4)]
    batch = [(messages[0], "a"), (messages[1], InvalidMessage("bad JSON")), (messages[2], "b"), (messages[3], "c")]
    await consumer(handle).process(batch)
    assert handle.seen == [["a", "b", "c"]]  # the undecodable one never reaches the handler
    assert [m.outcome for m in messages] == [[], [("reject", False)], [("reject", False)], [("ack", True)]]


@pytest.mark.gen_test
async def test_delivery_tags_that_restarted_are_acked_one_by_one():
    handle = await returning({})
    messages = [FakeMessage(tag) for tag in (7, 8, 1)]  # the channel was replaced mid-batch
    await consumer(handle).process([(m, "x") for m in messages])
    assert [m.outcome for m in messages] == [[("ack", False)]] * 3


@pytest.mark.gen_test
async def test_a_failing_batch_is_requeued_once_then_dead_lettered():
    async def broken(items):
        raise ZeroDivisionError("a bug")
    first, again = FakeMessage(1), FakeMessage(2, redelivered=True)
    await consumer(broken).process([(first, "x"), (again, "y")])
    assert first.outcome == [("nack", True)]
    assert again.outcome == [("reject", False)]


@pytest.mark.gen_test
async def test_an_unavailable_database_retries_the_batch_until_it_succeeds():
    calls = []

    async def flaky(items):
        calls.append(items)
        if len(calls) < 3:
            raise Unavailable("Database temporarily unavailable.")
        return {}
    message = FakeMessage(1)
    await consumer(flaky).process([(message, "x")])
    assert len(calls) == 3 and message.outcome == [("ack", True)]


@pytest.mark.gen_test
async def test_nothing_is_acked_before_the_handler_returned():
    message = FakeMessage(1)

    async def handle(items):
        assert message.outcome == []
        return {}
    await consumer(handle).process([(message, "x")])
    assert message.outcome == [("ack", True)]


def digits(body):
    if not body.isdigit():
        raise InvalidMessage("not a number")
    return int(body)


@pytest.mark.gen_test
async def test_messages_are_batched_in_delivery_order_up_to_the_batch_size():
    seen = []

    async def handle(items):
        seen.append(items)
        return {}
    batches = BatchConsumer("q", decode=digits, handle_batch=handle, batch_size=2)
    messages = [FakeMessage(tag, body=str(tag).encode()) for tag in range(1, 6)] + [FakeMessage(6, body=b"x")]
    for message in messages:  # all waiting before the loop runs: batches are as full as the size allows
        await batches.on_message(message)
    running = asyncio.create_task(batches.run())
    await eventually(lambda: assert_true(messages[-1].outcome))
    running.cancel()
    assert seen == [[1, 2], [3, 4], [5]]
    ack = [("ack", True)]
    assert [m.outcome for m in messages] == [[], ack, [], ack, ack, [("reject", False)]]


def assert_true(value):
    assert value
