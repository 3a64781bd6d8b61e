"""The multi-node connection (`common.broker.amqp_nodes`) against the real broker: three TCP proxies in front of it
stand for three nodes of a cluster, so a node can be lost, or fall silent, without touching the shared RabbitMQ."""
import asyncio

import aio_pika
import pytest

from common.broker import publisher as publishing
from common.broker.amqp_nodes import connect_nodes, split_urls
from common.broker.publisher import Publisher
from common.runtime.config import ConfigurationError
from harness.infra import INFRA
from harness.proxy import TcpProxy
from harness.stack import free_port
from tests.conftest import eventually


@pytest.fixture
def proxies():
    started = [TcpProxy(INFRA.amqp_port).up() for _ in range(3)]
    yield started
    for proxy in started:
        proxy.down()


def node_urls(run_env, ports, heartbeat=2):
    vhost = run_env["RABBITMQ_URL"].rsplit("/", 1)[1]
    # A short heartbeat, as the chaos runs use: aiormq's close after a reset waits for a drain of the dead
    # socket bounded by the heartbeat's grace (seen once in a few runs here: minutes with the default 60 s).
    return [f"amqp://guest:guest@127.0.0.1:{port}/{vhost}?heartbeat={heartbeat}" for port in ports]


async def round_trip(channel, queue_name):
    """Publish one message on `channel` and get it back: the node works for us. (One long-lived channel, as
    the services use: aio-pika restores it on each reconnect.)"""
    queue = await channel.declare_queue(queue_name, auto_delete=True)
    await channel.default_exchange.publish(aio_pika.Message(b"ping"), routing_key=queue_name)

    async def got_it():
        message = await queue.get(fail=False)
        assert message is not None and message.body == b"ping"
        await message.ack()
    await eventually(got_it)


def test_rabbitmq_url_lists_are_split_and_bad_entries_named():
    assert split_urls("amqp://a:5681/v, amqp://b:5682/v,") == ["amqp://a:5681/v", "amqp://b:5682/v"]
    with pytest.raises(ConfigurationError, match="names no node"):
        split_urls(" , ")
    with pytest.raises(ConfigurationError, match="http://u@h:1/v is not an amqp:// URL") as raised:
        split_urls("amqp://a:5681/v,http://u:secret@h:1/v")
    assert "secret" not in str(raised.value)


@pytest.mark.gen_test(timeout=30)
async def test_connection_skips_nodes_that_refuse(run_env, proxies):
    dead = free_port()  # nothing listens there
    urls = node_urls(run_env, [dead, proxies[1].port, proxies[2].port])
    connection = await connect_nodes(urls)
    try:
        assert connection.node.port == proxies[1].port
        await round_trip(await connection.channel(), "amqp_nodes_skip")
    finally:
        await connection.close()


@pytest.mark.gen_test(timeout=60)
async def test_connection_moves_to_the_next_node_each_time_it_loses_one(run_env, proxies):
    urls = node_urls(run_env, [proxy.port for proxy in proxies])
    connection = await connect_nodes(urls)
    try:
        assert connection.node.port == proxies[0].port
        channel = await connection.channel()
        # Lose node 0: the next is node 1. Then lose node 1 while node 0 is back: the next is node 2, not a
        # return to the first in the list. Then lose node 2: round to node 0.
        for lost, expected, back in ((0, 1, None), (1, 2, 0), (2, 0, 1)):
            if back is not None:
                proxies[back].up()
            proxies[lost].down()

            async def on_expected_node(expected=expected):
                assert connection.connected.is_set() and connection.node.port == proxies[expected].port
            await eventually(on_expected_node, timeout=20)
            await round_trip(channel, f"amqp_nodes_move_{expected}")
    finally:
        await connection.close()


@pytest.mark.gen_test(timeout=60)
async def test_move_on_leaves_the_node_for_the_next_and_the_consumer_follows(run_env, proxies):
    """`move_on` while the node is fine: the next node, the channel's QoS and consumer set up again there, and
    messages published after the move still reach the consumer of before."""
    urls = node_urls(run_env, [proxy.port for proxy in proxies])
    connection = await connect_nodes(urls)
    reconnects = []
    connection.reconnect_callbacks.append(lambda: reconnects.append(connection.node.port))
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=7)
        queue_name = "amqp_nodes_move_on"
        await channel.declare_queue(queue_name, auto_delete=True)
        received = asyncio.Queue()

        async def on_message(message):
            await message.ack()
            received.put_nowait(message.body)
        await (await channel.get_queue(queue_name)).consume(on_message)
        assert connection.move_on("a test") is True
        assert connection.move_on("a second caller") is False  # one move, not two
        await eventually(lambda: assert_on(connection, proxies[1].port), timeout=20)
        assert reconnects == [proxies[1].port]
        await channel.default_exchange.publish(aio_pika.Message(b"after"), routing_key=queue_name)
        assert await asyncio.wait_for(received.get(), 10) == b"after"
        assert (await channel.get_underlay_channel()).number is not None
    finally:
        await connection.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_channel_the_broker_closes_is_opened_again_on_the_same_node(run_env, proxies):
    connection = await connect_nodes(node_urls(run_env, [proxy.port for proxy in proxies]))
    try:
        channel = await connection.channel()
        with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
            await channel.get_queue("amqp_nodes_no_such_queue")  # a passive declare: the broker closes the channel
        await round_trip(channel, "amqp_nodes_reopened")
        assert connection.node.port == proxies[0].port
    finally:
        await connection.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_publisher_whose_node_falls_silent_moves_to_the_next_node(run_env, proxies):
    """A node that neither confirms nor resets (a partition): its heartbeat (60 s here) would notice only after
    minutes; the publisher's timeouts in a row make the connection leave it."""
    connection = await connect_nodes(node_urls(run_env, [proxy.port for proxy in proxies], heartbeat=60))
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.declare_queue("amqp_nodes_silent", auto_delete=True)
        publisher = Publisher(channel, timeout=0.5, leave_node=connection.move_on)
        await publisher.publish("amqp_nodes_silent", b"{}", 1)
        proxies[0].pause()
        for attempt in range(publishing.LEAVE_AFTER_TIMEOUTS):
            assert connection.node.port == proxies[0].port
            with pytest.raises(TimeoutError):
                await publisher.publish("amqp_nodes_silent", b"{}", 2 + attempt)
        await eventually(lambda: assert_on(connection, proxies[1].port), timeout=20)
        await publisher.publish("amqp_nodes_silent", b"{}", 9)  # confirmed by the next node
        assert publisher.timeouts == 0
    finally:
        proxies[0].resume()
        await connection.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_publish_whose_connection_is_found_stuck_is_not_confirmed_and_its_task_goes_on(run_env, proxies):
    """The heartbeat finds the silent node's connection stuck while a confirm is awaited: aiormq rejects the
    confirm with `CancelledError`. The publisher reports a publish not confirmed, so that the relay or sender
    awaiting it stays alive (taken for a stop, the CancelledError would end its loop, its rows never sent)."""
    connection = await connect_nodes(node_urls(run_env, [proxy.port for proxy in proxies], heartbeat=1))
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.declare_queue("amqp_nodes_stuck", auto_delete=True)
        publisher = Publisher(channel, timeout=30)
        await publisher.publish("amqp_nodes_stuck", b"{}", 1)
        proxies[0].pause()
        with pytest.raises(ConnectionError, match="closed under the task"):
            await publisher.publish("amqp_nodes_stuck", b"{}", 2)
        assert asyncio.current_task().cancelling() == 0
        await eventually(lambda: assert_on(connection, proxies[1].port), timeout=20)
        assert await publisher.publish_all("amqp_nodes_stuck", [(3, {}, None)]) == [3]
    finally:
        proxies[0].resume()
        await connection.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_consume_whose_connection_is_found_stuck_is_made_on_the_next_channel(run_env, proxies):
    """The heartbeat finds the node's connection stuck while the broker is asked to consume (as when a service
    starts its consumers just as the broker goes): the consume does not fail the caller (a service's start, which
    would end the process) and the consumer gets the queue's messages on the next node's channel."""
    connection = await connect_nodes(node_urls(run_env, [proxy.port for proxy in proxies], heartbeat=1))
    try:
        channel, queue_name = await connection.channel(), "amqp_nodes_consumed_while_stuck"
        # Not auto-delete: the broker would delete it when it drops the stuck connection, cancelling the consumer.
        await channel.declare_queue(queue_name)
        received = asyncio.Queue()

        async def on_message(message):
            await message.ack()
            received.put_nowait(message.body)
        proxies[0].pause()
        assert await (await channel.get_queue(queue_name, ensure=False)).consume(on_message) is None
        assert asyncio.current_task().cancelling() == 0
        await eventually(lambda: assert_on(connection, proxies[1].port), timeout=20)
        await channel.default_exchange.publish(aio_pika.Message(b"next"), routing_key=queue_name)
        assert await asyncio.wait_for(received.get(), 15) == b"next"
        await channel.cancel(on_message)  # first: a consumer whose queue is deleted waits for it to come back
        await channel.queue_delete(queue_name)
    finally:
        proxies[0].resume()
        await connection.close()


def assert_on(connection, port):
    assert connection.connected.is_set() and connection.node.port == port


@pytest.mark.gen_test(timeout=60)
async def test_a_consumer_the_broker_cancels_consumes_again_once_its_queue_is_back(run_env, proxies):
    connection = await connect_nodes(node_urls(run_env, [proxies[0].port]))
    try:
        channel, other = await connection.channel(), await connection.channel()
        queue_name = "amqp_nodes_cancelled"
        await other.declare_queue(queue_name)
        received = asyncio.Queue()

        async def on_message(message):
            await message.ack()
            received.put_nowait(message.body)
        await (await channel.get_queue(queue_name)).consume(on_message)
        await other.queue_delete(queue_name)  # the broker cancels the consumer
        await asyncio.sleep(1.5)  # a try or two while the queue is missing
        await other.declare_queue(queue_name)
        await other.default_exchange.publish(aio_pika.Message(b"back"), routing_key=queue_name)
        assert await asyncio.wait_for(received.get(), 15) == b"back"
        await other.queue_delete(queue_name)
    finally:
        await connection.close()
