"""`/ready` answers 503 while the broker or the database is away (cut with `harness.proxy.TcpProxy`, the real
servers untouched), and 200 again once they are back, without a restart."""
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from common.runtime.config import load_settings
from harness.proxy import TcpProxy
from harness.stack import free_port
from order_svc.bootstrap import OrderService
from payment_svc.bootstrap import PaymentService
from tests.conftest import eventually
from tests.integration.conftest import running, stopped
from tests.integration.http import request


def through(url, proxy):
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.netloc.rsplit(':', 1)[0]}:{proxy.port}"))


def proxied(io_loop, run_env, service_class):
    """A service whose database and broker connections go through proxies: (service, db proxy, broker proxy)."""
    dsn_key = "ORDER_DB_DSN" if service_class is OrderService else "PAYMENT_DB_DSN"
    db_proxy = TcpProxy(urlsplit(run_env[dsn_key]).port).up()
    broker_proxy = TcpProxy(urlsplit(run_env["RABBITMQ_URL"]).port or 5672).up()
    settings = load_settings({**run_env, dsn_key: through(run_env[dsn_key], db_proxy),
                              "RABBITMQ_URL": through(run_env["RABBITMQ_URL"], broker_proxy),
                              "ORDER_SVC_PORT": str(free_port()), "PAYMENT_SVC_PORT": str(free_port())})
    service = running(io_loop, service_class(settings))
    yield service, db_proxy, broker_proxy
    stopped(io_loop, service, timeout=60)
    db_proxy.down()
    broker_proxy.down()


# `/ready` is one handler (common/web/health.py) for both services: the broker case on one, the database on the other.
@pytest.fixture(params=[(OrderService, "broker", "RabbitMQ unreachable."),
                        (PaymentService, "database", "Database temporarily unavailable.")],
                ids=["order_svc without its broker", "payment_svc without its database"])
def cut(io_loop, run_env, request):
    """(service, the proxy to cut, the message `/ready` must give while it is cut)."""
    service_class, away, message = request.param
    for service, db_proxy, broker_proxy in proxied(io_loop, run_env, service_class):
        yield service, (broker_proxy if away == "broker" else db_proxy), message


async def readiness(service):
    code, body = await request(service.admin_server.port, "GET", "/ready")
    return code, body["message"]


@pytest.mark.gen_test(timeout=90)
async def test_ready_is_503_while_a_dependency_is_away_and_200_once_it_is_back(cut):
    service, proxy, message = cut
    assert await readiness(service) == (200, "Ready.")
    proxy.down()

    async def not_ready():
        assert await readiness(service) == (503, message)
    await eventually(not_ready, timeout=30)
    proxy.up()

    async def ready():
        assert await readiness(service) == (200, "Ready.")
    await eventually(ready, timeout=40)



@pytest.fixture(params=[OrderService, PaymentService], ids=["order_svc", "payment_svc"])
def behind_proxies(io_loop, run_env, request):
    yield from proxied(io_loop, run_env, request.param)


@pytest.mark.gen_test(timeout=90)
async def test_a_slow_link_is_slow_not_away(behind_proxies):
    """0.3 s each way to the database and the broker (every round trip 0.6 s): no timeout takes that for an
    outage, and the service stays ready (the Order Service also takes an order)."""
    service, db_proxy, broker_proxy = behind_proxies
    db_proxy.slow(0.3)
    broker_proxy.slow(0.3)
    started = time.monotonic()
    assert await readiness(service) == (200, "Ready.")
    assert time.monotonic() - started >= 0.6  # the probe crossed the slow link
    if isinstance(service, OrderService):
        code, body = await request(service.port, "POST", "/orders",
                                   {"user_id": 1, "amount": "1.00", "description": "slow link"})
        assert code == 201 and body["order"]["status"] == "NEW", body
    db_proxy.slow(0)
    broker_proxy.slow(0)
