"""The gauges the alerts watch: readiness and the dead-letter queues' depth, refreshed at each scrape."""
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

from common.broker.messages import ORDER_REQUESTS
from common.runtime.config import load_settings
from harness.infra import INFRA
from harness.proxy import TcpProxy
from harness.stack import free_port
from payment_svc.bootstrap import PaymentService
from tests.conftest import eventually
from tests.integration.test_dead_letter_replay import dead_lettered


async def scrape(port):
    """{(sample name, frozenset of labels): value} of a service's /metrics."""
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.body.decode()) for sample in family.samples}


@pytest.mark.gen_test(timeout=60)
async def test_metrics_say_ready_and_count_waiting_dead_letters(payment_service, run_env, user_id, dead_letter_ids):
    dead_letter_ids.add(f"gauge-{user_id}")
    await payment_service.broker.publisher.publish(ORDER_REQUESTS, b"{not json", f"gauge-{user_id}")
    await dead_lettered(run_env, f"gauge-{user_id}")
    samples = await scrape(payment_service.admin_server.port)
    assert samples[("shop_ready", frozenset())] == 1
    assert samples[("shop_dead_letter_queue_messages", frozenset({("queue", ORDER_REQUESTS)}))] >= 1
    assert ("shop_dead_letter_queue_messages", frozenset({("queue", "outbox_ps")})) in samples


@pytest.fixture
def proxied_broker():
    proxy = TcpProxy(INFRA.amqp_port).up()
    yield proxy
    proxy.down()


@pytest.mark.gen_test(timeout=90)
async def test_metrics_say_not_ready_while_the_broker_is_away(io_loop, run_env, proxied_broker):
    settings = load_settings({**run_env, "ORDER_SVC_PORT": str(free_port()), "PAYMENT_SVC_PORT": str(free_port()),
                              "RABBITMQ_URL": run_env["RABBITMQ_URL"].replace(f":{INFRA.amqp_port}/",
                                                                              f":{proxied_broker.port}/")})
    service = PaymentService(settings)
    await service.start()
    try:
        assert (await scrape(service.admin_server.port))[("shop_ready", frozenset())] == 1
        proxied_broker.down()

        async def not_ready():
            assert (await scrape(service.admin_server.port))[("shop_ready", frozenset())] == 0
        await eventually(not_ready, timeout=30)
        proxied_broker.up()

        async def ready_again():
            assert (await scrape(service.admin_server.port))[("shop_ready", frozenset())] == 1
        await eventually(ready_again, timeout=60)
    finally:
        await service.stop()
