"""The window of background publishes: bounded, freed as confirms arrive, each send followed up once."""
import asyncio

import pytest

from common.publisher import Publisher, PublishWindow
from tests.conftest import eventually
from tests.unit.fakes import FakePublisher


@pytest.mark.gen_test
async def test_a_send_hands_its_follow_up_the_confirmed_and_the_unconfirmed_ids():
    followed = []

    async def then(confirmed, unconfirmed):
        followed.append((confirmed, unconfirmed))
    window = PublishWindow(FakePublisher(refused={2}))
    window.send("q", [(1, b"a", None), (2, b"b", None), (3, b"c", None)], then)
    await window.drain()
    assert followed == [([1, 3], [2])]


@pytest.mark.gen_test
async def test_a_full_window_has_no_room_until_its_publishes_are_confirmed():
    publisher = FakePublisher()
    publisher.gate.clear()  # the broker has not confirmed anything yet
    window = PublishWindow(publisher, limit=3)

    async def then(*_):
        pass
    window.send("q", [(1, b"", None), (2, b"", None)], then)
    assert window.has_room()
    window.send("q", [(3, b"", None)], then)
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
    window.send("q", [(1, b"", None)], then)
    await eventually(lambda: assert_room(window))
    assert "the relay takes over" in caplog.text


def assert_room(window):
    assert window.has_room()


class Exchange:
    def __init__(self, refuse):
        self.refuse, self.sent = refuse, []

    async def publish(self, message, routing_key, timeout):
        if message.message_id in self.refuse:
            raise TimeoutError()
        self.sent.append((routing_key, message.message_id, message.body, message.delivery_mode))


class Channel:
    def __init__(self, refuse=()):
        self.default_exchange = Exchange(set(refuse))


@pytest.mark.gen_test
async def test_publish_all_returns_only_what_the_broker_confirmed_as_persistent_messages():
    channel = Channel(refuse={"2"})
    messages = [(1, b"a", None), (2, b"b", None), (3, b"c", None)]
    confirmed = await Publisher(channel, timeout=1).publish_all("q", messages)
    assert confirmed == [1, 3]
    assert [(q, mid, body, int(mode)) for q, mid, body, mode in channel.default_exchange.sent] == \
        [("q", "1", b"a", 2), ("q", "3", b"c", 2)]
