"""The Order Service reaches PostgreSQL and RabbitMQ through proxies the test cuts and restores: it waits for
them at start-up, answers 503 while the database is away, keeps orders while the broker is away, and
resumes by itself."""
from decimal import Decimal

import pytest

from harness.client import call
from harness.infra import INFRA
from harness.invariants import check_invariants, pending_count, wait_until_settled
from harness.proxy import TcpProxy
from harness.stack import Stack
from tests.conftest import wait_for


@pytest.fixture
def proxied():
    """A stack whose Order Service talks to PostgreSQL and RabbitMQ through (initially cut) proxies."""
    postgres, rabbitmq = TcpProxy(INFRA.pg_port), TcpProxy(INFRA.amqp_port)
    stack = Stack(prefix="shop_e2e")
    order_env = stack["order"].env
    order_env["ORDER_DB_DSN"] = order_env["ORDER_DB_DSN"].replace(f":{INFRA.pg_port}/", f":{postgres.port}/")
    order_env["RABBITMQ_URL"] = order_env["RABBITMQ_URL"].replace(f":{INFRA.amqp_port}/", f":{rabbitmq.port}/")
    try:
        yield stack, postgres, rabbitmq
    finally:
        postgres.down()
        rabbitmq.down()
        stack.close()


def place(stack, amount=10):
    code, body = call(stack.url, "POST", "/orders", {"user_id": 5, "amount": amount})
    assert code == 201, body
    return body["order_id"]


def test_order_service_waits_for_and_survives_database_and_broker_outages(proxied):
    stack, postgres, rabbitmq = proxied
    stack.start("payment", "gateway")
    stack["order"].start()
    wait_for(lambda: assert_logged(stack, "waiting for PostgreSQL at"), timeout=20)
    assert stack["order"].is_running()
    assert call(stack.url, "GET", "/orders/1") == \
        (503, {"status": "Fail", "message": "Order Service temporarily unavailable."})
    postgres.up()
    rabbitmq.up()
    stack["order"].wait_healthy()

    call(stack.url, "POST", "/payments", {"user_id": 5})
    call(stack.url, "PUT", "/payments/5", {"amount": 100})
    orders = [place(stack)]

    rabbitmq.down()
    orders += [place(stack) for _ in range(3)]
    assert pending_count(stack.order_dsn) >= 3
    rabbitmq.up()
    assert wait_until_settled(stack.order_dsn, timeout=30) is not None

    postgres.down()
    assert call(stack.url, "GET", f"/orders/{orders[0]}") == \
        (503, {"status": "Fail", "message": "Database temporarily unavailable."})
    assert call(stack.url, "POST", "/orders", {"user_id": 5, "amount": 1})[0] == 503
    postgres.up()
    wait_for(lambda: assert_status(call(stack.url, "GET", f"/orders/{orders[0]}"), 200))
    orders.append(place(stack))
    assert wait_until_settled(stack.order_dsn, timeout=30, payment_db=stack.payment_dsn) is not None

    report = check_invariants(stack.order_dsn, stack.payment_dsn, {5: Decimal(100)}, orders)
    assert report.ok, report.table()


def assert_logged(stack, text):
    assert text in stack["order"].log()


def assert_status(reply, code):
    assert reply[0] == code, reply
