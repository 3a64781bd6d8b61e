"""The window of background publishes: bounded, freed as confirms arrive, each send followed up once."""
import asyncio
from types import SimpleNamespace

import pytest

from common.broker.publisher import LEAVE_AFTER_TIMEOUTS, Publisher, PublishWindow
from common.observability.metrics import PUBLISH_FAILED, PUBLISHED, ROWS_PUBLISHED
from tests.conftest import eventually
from tests.unit.fakes import FakePublisher, let_run


@pytest.mark.gen_test
async def test_a_send_hands_its_follow_up_the_confirmed_and_the_unconfirmed_ids():
    followed = []

    async def then(confirmed, unconfirmed):
        followed.append((confirmed, unconfirmed))
    window = PublishWindow(FakePublisher(refused={2}))
    window.send("q", [(1, {"n": 1}, None), (2, {"n": 2}, None), (3, {"n": 3}, None)], then)
    await window.drain()
    assert followed == [([1, 3], [2])]


@pytest.mark.gen_test
async def test_a_full_window_has_no_room_until_its_publishes_are_confirmed():
    publisher = FakePublisher()
    publisher.gate.clear()  # the broker has not confirmed anything yet
    window = PublishWindow(publisher, limit=3)

    async def then(*_):
        pass
    window.send("q", [(1, {}, None), (2, {}, None)], then)
    assert window.has_room()
    window.send("q", [(3, {}, None)], then)
    assert not window.has_room()
    assert await window.room(timeout=0.05) is False
    waiting = asyncio.ensure_future(window.room(timeout=5))
    publisher.gate.set()
    assert await waiting is True and window.has_room()


@pytest.mark.gen_test
async def test_a_failing_follow_up_is_logged_and_frees_the_window(caplog):
    async def then(*_):
        raise RuntimeError("database away")
    window = PublishWindow(FakePublisher(), limit=1)
    window.send("q", [(1, {}, None)], then)
    await eventually(lambda: assert_room(window))
    assert "the relay takes over" in caplog.text


@pytest.mark.gen_test
async def test_drain_gives_up_on_sends_still_unconfirmed_after_the_publish_timeout(caplog):
    publisher = FakePublisher(timeout=0.05)
    publisher.gate.clear()  # never confirmed: the relay re-sends these rows later

    async def then(*_):
        pass
    window = PublishWindow(publisher)
    window.send("q", [(1, {}, None)], then)
    await asyncio.wait_for(window.drain(), 10)
    assert "1 immediate publishes unfinished at close" in caplog.messages
    publisher.gate.set()
    await window.drain()


def assert_room(window):
    assert window.has_room()


class Exchange:
    def __init__(self, refuse):
        self.refuse, self.sent, self.timeouts = refuse, [], []

    async def publish(self, message, routing_key, timeout):
        self.timeouts.append(timeout)
        if message.message_id in self.refuse:
            raise TimeoutError()
        self.sent.append((routing_key, message.message_id, message.body, message.delivery_mode,
                          message.content_type))


class Channel:
    def __init__(self, refuse=(), waiting=None):
        self.default_exchange = Exchange(set(refuse))
        self.waiting = waiting or {}

    async def get_underlay_channel(self):
        return self

    async def queue_declare(self, queue, passive=False):
        assert passive, "a queue's count is read without declaring it"
        return SimpleNamespace(message_count=self.waiting[queue])


@pytest.mark.gen_test
async def test_the_waiting_count_is_that_of_the_queue_asked_about():
    publisher = Publisher(Channel(waiting={"a": 3, "b": 0}), timeout=1)
    assert (await publisher.waiting_count("a"), await publisher.waiting_count("b")) == (3, 0)


@pytest.mark.gen_test
async def test_publish_all_returns_only_what_the_broker_confirmed_as_persistent_json_messages():
    channel, queue = Channel(refuse={"2"}), f"published-{id(object())}"
    rows = [(1, {"n": 1}, None), (2, {"n": 2}, None), (3, {"n": 3}, None)]
    confirmed = await Publisher(channel, timeout=1.5).publish_all(queue, rows)
    assert confirmed == [1, 3]
    assert [(q, mid, body, int(mode), kind) for q, mid, body, mode, kind in channel.default_exchange.sent] == \
        [(queue, "1", b'{"n": 1}', 2, "application/json"), (queue, "3", b'{"n": 3}', 2, "application/json")]
    assert channel.default_exchange.timeouts == [1.5] * 3  # each publish waits for its confirm that long
    assert (PUBLISHED.labels(queue)._value.get(), PUBLISH_FAILED.labels(queue)._value.get()) == (2, 1)


@pytest.mark.gen_test
async def test_rows_are_packed_up_to_the_entries_per_message_and_a_message_not_confirmed_leaves_all_its_rows():
    channel, queue = Channel(refuse={"3+1"}), f"packed-{id(object())}"
    rows = [(n, {"n": n}, None) for n in range(1, 6)]
    confirmed = await Publisher(channel, timeout=1, entries_per_message=2).publish_all(queue, rows)
    assert confirmed == [1, 2, 5]
    # A message of several rows: an array of their entries, its id the first row's and how many more; one row
    # alone travels as before packing, an object under its row's id.
    assert [(mid, body) for _, mid, body, *_ in channel.default_exchange.sent] == \
        [("1+1", b'[{"n": 1}, {"n": 2}]'), ("5", b'{"n": 5}')]
    assert (PUBLISHED.labels(queue)._value.get(), PUBLISH_FAILED.labels(queue)._value.get()) == (2, 1)
    assert ROWS_PUBLISHED.labels(queue)._value.get() == 3


@pytest.mark.gen_test
async def test_rows_handed_to_the_window_in_one_tick_go_out_in_one_send_with_one_follow_up():
    followed = []

    async def then(confirmed, unconfirmed):
        followed.append((confirmed, unconfirmed))
    publisher = FakePublisher(refused={2})
    window = PublishWindow(publisher)
    for n in (1, 2, 3):  # three orders committed together, each handed over on its own
        window.send("q", [(n, {}, None)], then)
    await let_run()
    window.send("q", [(4, {}, None)], then)  # a later tick: a send of its own
    await window.drain()
    assert publisher.calls == [[1, 2, 3], [4]]
    assert followed == [([1, 3], [2]), ([4], [])]
    assert window.has_room()


class SilentChannel:
    """A channel whose node confirms nothing once `silent` is set."""

    def __init__(self):
        self.silent = False
        self.default_exchange = self

    async def publish(self, message, routing_key, timeout):
        if self.silent:
            await asyncio.Event().wait()

    async def get_underlay_channel(self):
        if self.silent:  # e.g. a channel that is not open again
            await asyncio.Event().wait()
        return self

    async def queue_declare(self, queue, passive):
        return SimpleNamespace(message_count=7)


@pytest.mark.gen_test
async def test_a_publisher_leaves_its_node_after_timeouts_in_a_row_and_counts_afresh_on_the_next():
    channel, reasons = SilentChannel(), []

    def leave_node(reason):
        reasons.append(reason)
        return True
    publisher = Publisher(channel, timeout=0.05, leave_node=leave_node)
    channel.silent = True
    for _ in range(LEAVE_AFTER_TIMEOUTS - 1):
        with pytest.raises(TimeoutError):
            await publisher.publish("q", b"{}", 1)
    channel.silent = False
    await publisher.publish("q", b"{}", 2)  # a confirm between: the count starts again
    channel.silent = True
    for _ in range(LEAVE_AFTER_TIMEOUTS):
        with pytest.raises(TimeoutError):
            await publisher.publish("q", b"{}", 3)
    assert reasons == [f"{LEAVE_AFTER_TIMEOUTS} publishes in a row not confirmed within 0.05 s"]


@pytest.mark.gen_test
async def test_a_queue_count_is_bounded_by_the_publish_timeout_and_counts_toward_leaving_a_silent_node():
    channel, reasons = SilentChannel(), []
    publisher = Publisher(channel, timeout=0.05, leave_node=lambda reason: reasons.append(reason) or True)
    assert await publisher.waiting_count("q") == 7
    channel.silent = True
    for _ in range(LEAVE_AFTER_TIMEOUTS):
        with pytest.raises(TimeoutError):
            await publisher.waiting_count("q")
    assert len(reasons) == 1


@pytest.mark.gen_test
async def test_publishes_sent_to_the_node_left_behind_do_not_count_against_the_next():
    channel, moves = SilentChannel(), []
    publisher = Publisher(channel, timeout=0.1, leave_node=lambda reason: moves.append(reason) or True)
    channel.silent = True
    sent = LEAVE_AFTER_TIMEOUTS + 4  # concurrent, all to the silent node: the first timeouts move, the rest are late
    results = await asyncio.gather(*(publisher.publish("q", b"{}", n) for n in range(sent)), return_exceptions=True)
    assert all(isinstance(result, TimeoutError) for result in results)
    assert len(moves) == 1 and publisher.timeouts == 0
    with pytest.raises(TimeoutError):
        await publisher.publish("q", b"{}", 99)  # the next node silent too: counted afresh
    assert len(moves) == 1 and publisher.timeouts == 1


@pytest.mark.gen_test
async def test_rows_handed_over_while_a_send_awaits_its_confirm_go_out_together_in_the_next():
    publisher = FakePublisher()
    publisher.gate.clear()  # the first send waits for its confirm

    async def then(*_):
        pass
    window = PublishWindow(publisher)
    window.send("q", [(1, {}, None)], then)
    await let_run()  # the first send is under way
    for n in (2, 3):  # handed over in different ticks, while it waits
        window.send("q", [(n, {}, None)], then)
        await asyncio.sleep(0)
    publisher.gate.set()
    await window.drain()
    assert publisher.calls == [[1], [2, 3]] and window.has_room()
