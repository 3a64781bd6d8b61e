"""The multi-node connection (`common.broker.amqp_nodes`) against the real broker: three TCP proxies in front of it
stand for three nodes of a cluster, so a node can be lost without touching the shared RabbitMQ."""
import aio_pika
import pytest

from common.broker.amqp_nodes import connect_robust, split_urls
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


def node_urls(run_env, ports):
    vhost = run_env["RABBITMQ_URL"].rsplit("/", 1)[1]
    # A short heartbeat, as the chaos runs use: aiormq's close after a reset waits for a drain of the dead
    # socket bounded by the heartbeat's grace (seen once in a few runs here: minutes with the default 60 s).
    return [f"amqp://guest:guest@127.0.0.1:{port}/{vhost}?heartbeat=2" for port in ports]


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
    connection = await connect_robust(urls)
    try:
        assert connection.node.port == proxies[1].port
        await round_trip(await connection.channel(), "amqp_nodes_skip")
    finally:
        await connection.close()


@pytest.mark.gen_test(timeout=60)
async def test_connection_moves_to_the_next_node_each_time_it_loses_one(run_env, proxies):
    urls = node_urls(run_env, [proxy.port for proxy in proxies])
    connection = await connect_robust(urls)
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
