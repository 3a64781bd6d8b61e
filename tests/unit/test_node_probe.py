"""`NodeProbe` without a broker: a node whose probes go unconfirmed three times in a row is left, once; a confirm,
a new connection or a failing channel starts the count again."""
import asyncio

import pytest

from common.broker import node_probe
from common.broker.node_probe import LEAVE_AFTER_MISSES, NodeProbe

pytestmark = pytest.mark.gen_test


class Node:
    """What the probe uses of a `NodeConnection`: the open connection and `move_on`."""

    def __init__(self):
        self.connection = object()
        self.left = []

    def move_on(self, reason):
        self.left.append(reason)
        self.connection = object()  # the next node's
        return True

    def __str__(self):
        return "node-1"


class Exchange:
    def __init__(self):
        self.answer = "confirm"  # or "silence", or an exception to raise

    async def publish(self, message, routing_key, mandatory):
        assert routing_key == node_probe.PROBE_QUEUE and not mandatory
        if self.answer == "silence":
            await asyncio.Event().wait()
        elif isinstance(self.answer, BaseException):
            raise self.answer


class Channel:
    def __init__(self):
        self.default_exchange = Exchange()


@pytest.fixture(autouse=True)
def short_timeout(monkeypatch):
    monkeypatch.setattr(node_probe, "PROBE_TIMEOUT", 0.01)


async def probes(probe, count):
    return [await probe.probe() for _ in range(count)]


async def test_a_node_whose_probes_go_unconfirmed_three_times_in_a_row_is_left_once():
    node, channel = Node(), Channel()
    probe = NodeProbe(node, channel)
    channel.default_exchange.answer = "silence"
    assert await probes(probe, LEAVE_AFTER_MISSES - 1) == [True] * (LEAVE_AFTER_MISSES - 1)  # asked again at once
    assert node.left == []
    assert await probe.probe() is False
    assert node.left == [f"{LEAVE_AFTER_MISSES} probes in a row not confirmed within 0.01 s"]
    # On the next node the count starts again.
    await probes(probe, LEAVE_AFTER_MISSES - 1)
    assert len(node.left) == 1


async def test_a_confirm_starts_the_count_again():
    node, channel = Node(), Channel()
    probe = NodeProbe(node, channel)
    for answer in ("silence", "silence", "confirm", "silence", "silence"):
        channel.default_exchange.answer = answer
        await probe.probe()
    assert node.left == []


async def test_a_new_connection_starts_the_count_again():
    node, channel = Node(), Channel()
    probe = NodeProbe(node, channel)
    channel.default_exchange.answer = "silence"
    await probes(probe, LEAVE_AFTER_MISSES - 1)
    node.connection = object()  # the connection's own loop moved (its heartbeat gave up)
    await probes(probe, LEAVE_AFTER_MISSES - 1)
    assert node.left == []


@pytest.mark.parametrize("error", [ConnectionError("gone"), asyncio.CancelledError()],
                         ids=["channel_failed", "cancelled_under_us"])
async def test_a_failing_channel_is_no_verdict_on_the_node(error):
    node, channel = Node(), Channel()
    probe = NodeProbe(node, channel)
    channel.default_exchange.answer = error
    assert await probes(probe, LEAVE_AFTER_MISSES + 1) == [False] * (LEAVE_AFTER_MISSES + 1)
    assert node.left == []
    assert probe.misses == 0


async def test_no_probe_while_the_connection_is_being_made_again():
    node, channel = Node(), Channel()
    node.connection = None
    channel.default_exchange.answer = AssertionError("published without a connection")
    assert await NodeProbe(node, channel).probe() is False
