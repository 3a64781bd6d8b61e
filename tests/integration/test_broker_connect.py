"""`Broker.connect`, a service's start on the broker, against the real RabbitMQ behind a proxy that cuts a
connection at a chosen moment, on a vhost of its own."""

import pytest

from common.broker.connection import Broker
from common.broker.messages import ORDER_REQUESTS
from common.runtime.config import load_settings
from harness.infra import INFRA
from harness.proxy import TcpProxy


@pytest.fixture
def vhost():
    with INFRA.own_vhost("shop_it_connect") as name:
        yield name


@pytest.mark.gen_test(timeout=60)
async def test_a_connection_lost_while_the_queues_are_declared_is_made_again_and_the_start_goes_on(vhost):
    """The broker goes just as the service declares its queues: the start waits and connects again (a start that
    raised would end the process, as a broker away at start-up must not)."""
    cut = []

    def cut_at_the_first_declare(sent):
        if not cut and ORDER_REQUESTS.encode() in sent:
            cut.append(len(sent))
            return True
        return False
    proxy = TcpProxy(INFRA.amqp_port, cut_after=cut_at_the_first_declare).up()
    try:
        url = INFRA.amqp_url(vhost).replace(f":{INFRA.amqp_port}/", f":{proxy.port}/")
        broker = await Broker.connect(url, prefetch=10, queue_type=load_settings({}).queue_type)
        try:
            assert cut, "the proxy never saw the queue declared: the test cut nothing"
            assert await broker.publisher.publish_all(ORDER_REQUESTS, [(1, {"n": 1}, None)]) == [1]
        finally:
            await broker.close()
    finally:
        proxy.down()
