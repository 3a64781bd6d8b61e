"""A replica cut off from its database steps aside: after CONSUMER_STEP_ASIDE_AFTER seconds it gives the requests
it holds back to the queue, where a replica whose database answers settles them, and it consumes again once its
own answers. Two Payments Services on one database, one of them through a proxy that falls silent (a partition:
no reset, no answer)."""
import logging
from dataclasses import replace
from decimal import Decimal

import pytest

from common.broker.messages import ORDER_REQUESTS, PaymentRequest
from common.runtime.config import load_settings
from harness.infra import INFRA
from harness.proxy import TcpProxy
from payment_svc.bootstrap import PaymentService
from tests.conftest import eventually
from tests.integration.conftest import own_run_env, running, stopped
from tests.integration.http import request

REQUESTS = 12


@pytest.fixture(scope="module")
def run_env():
    """A vhost and databases of this module's own: its queue must reach only its own two services."""
    with own_run_env("shop_it_sa", ORDER_SVC_PORT="0", PAYMENT_SVC_PORT="0") as env:
        yield env


@pytest.fixture
def replicas(io_loop, run_env, request):
    """(cut, healthy): the first reaches the database through a proxy the test silences; it steps aside after
    `request.param` seconds (0: never)."""
    settings = load_settings(run_env)
    proxy = TcpProxy(INFRA.pg_port).up()
    cut_settings = replace(settings, consumer_step_aside_after=request.param,
                           payment_db_dsn=settings.payment_db_dsn.replace(f":{INFRA.pg_port}/", f":{proxy.port}/"))
    healthy = running(io_loop, PaymentService(settings))
    cut = running(io_loop, PaymentService(cut_settings))
    yield cut, healthy, proxy
    proxy.resume()
    stopped(io_loop, cut)
    stopped(io_loop, healthy)
    proxy.down()


async def settled(service, order_ids):
    async def read(cur):
        await cur.execute("SELECT count(*) FROM inbox WHERE order_id = ANY(%s) AND status = 'FINISHED'",
                          (list(order_ids),))
        return (await cur.fetchone())[0]
    return await service.db.run(read)


async def place_requests(healthy, user_id):
    await request(healthy.port, "POST", "/payments", {"user_id": user_id})
    await request(healthy.port, "PUT", f"/payments/{user_id}", {"amount": 1000})
    order_ids = [user_id * 100 + n for n in range(REQUESTS)]
    for order_id in order_ids:
        await healthy.broker.publisher.publish(ORDER_REQUESTS, PaymentRequest(order_id, user_id, Decimal("1")).encode(),
                                               order_id)
    return order_ids


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("replicas", [1.0], indirect=True)
async def test_a_replica_cut_from_its_database_gives_its_requests_to_another(replicas, user_id, caplog):
    cut, healthy, proxy = replicas
    proxy.pause()
    with caplog.at_level(logging.WARNING, "common.broker.consumer"):
        order_ids = await place_requests(healthy, user_id)

        async def all_settled():
            assert await settled(healthy, order_ids) == REQUESTS
        # The cut replica's share waits for a statement timeout (5 s) and the bound, then goes to the other.
        await eventually(all_settled, timeout=40)
    assert "messages given back to the queue for another replica" in caplog.text
    code, body = await request(healthy.port, "GET", f"/payments/{user_id}")
    assert (code, body["account"]["balance"]) == (200, Decimal("1000") - REQUESTS)

    proxy.resume()  # its database back: it consumes again

    async def consuming_again():
        assert "the database answers: consuming again" in caplog.text
    await eventually(consuming_again, timeout=20)

