"""Each service as its `bootstrap` wires it, on the fakes of its ports (database, broker, repository): an order
placed over HTTP is published, its payment result applied and read back; a payment request is debited and its
result published. And the fakes implement the ports they stand in for, method by method."""
import inspect
import json
from decimal import Decimal

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from common.broker.messages import ORDER_REQUESTS, PAYMENT_RESULTS, OrderStatus, PaymentRequest, PaymentResult
from common.runtime.config import load_settings
from common.web.auth import Authenticator
from order_svc import bootstrap as order_bootstrap
from order_svc.repo import OrderRepository, PostgresOrders
from payment_svc import bootstrap as payment_bootstrap
from payment_svc.repo import PaymentRepository, PostgresPayments
from tests.conftest import eventually
from tests.unit.fakes import FakeBroker, FakeDatabase, InMemoryOrders, InMemoryPayments

SETTINGS = load_settings({"AUTH_MODE": "off", "FAST_PATH": "1"})


def port_methods(port):
    return {name: inspect.signature(method) for name, method in vars(port).items()
            if inspect.iscoroutinefunction(method)}


@pytest.mark.parametrize("port, implementations", [(OrderRepository, (PostgresOrders, InMemoryOrders)),
                                                   (PaymentRepository, (PostgresPayments, InMemoryPayments))])
def test_the_product_and_the_fake_implement_the_repository_port_method_by_method(port, implementations):
    methods = port_methods(port)
    assert len(methods) > 10
    for implementation in implementations:
        for name, signature in methods.items():
            assert list(inspect.signature(getattr(implementation, name)).parameters) == list(signature.parameters), \
                f"{implementation.__name__}.{name}"


class Running:
    """A wiring's public application served on a free port, and a client for it."""

    def __init__(self, wiring):
        self.wiring = wiring
        sock, self.port = bind_unused_port()
        self.server = HTTPServer(wiring.app)
        self.server.add_sockets([sock])

    async def call(self, method, path, body=None):
        response = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{self.port}{path}", method=method, raise_error=False,
            body=None if body is None else json.dumps(body), headers={"Content-Type": "application/json"})
        return response.code, json.loads(response.body)

    async def close(self):
        self.server.stop()
        await self.server.close_all_connections()


@pytest.mark.gen_test
async def test_the_order_service_bootstrapped_on_fakes_places_publishes_and_finalizes_an_order():
    repo, broker = InMemoryOrders(), FakeBroker()
    wiring = order_bootstrap.bootstrap(SETTINGS, FakeDatabase(), broker, Authenticator(SETTINGS.auth), repo)
    for step in wiring.startup:
        await step()
    service = Running(wiring)
    try:
        code, body = await service.call("POST", "/orders", {"user_id": 3, "amount": "12.50"})
        assert code == 201 and body["order"]["status"] == "NEW"
        order_id = body["order_id"]
        await broker.window.drain()
        assert broker.publisher.published == [(ORDER_REQUESTS, order_id, PaymentRequest(order_id, 3,
                                                                                        Decimal("12.50")).entry())]
        # The fast path's send is counted by the relay's next step (then the relay only resends it).
        relay = wiring.workers["outbox"]
        relay.start()
        try:
            await eventually(lambda: assert_equal(repo.outbox[order_id]["attempts"], 1))
        finally:
            await relay.stop()
        [results] = [c.handle_batch for c in wiring.consumers if c.queue == PAYMENT_RESULTS]
        assert await results([PaymentResult(order_id, OrderStatus.FINISHED)]) == {}
        unknown = order_id + 1
        assert await results([PaymentResult(unknown, OrderStatus.FINISHED)]) == {0: f"unknown order {unknown}"}
        code, body = await service.call("GET", f"/orders/{order_id}")
        assert code == 200 and body["order"]["status"] == "FINISHED" and order_id not in repo.outbox
    finally:
        await service.close()


@pytest.mark.gen_test
async def test_the_payments_service_bootstrapped_on_fakes_debits_a_request_once_and_publishes_its_result():
    repo, broker = InMemoryPayments(), FakeBroker()
    wiring = payment_bootstrap.bootstrap(SETTINGS, FakeDatabase(), broker, Authenticator(SETTINGS.auth), repo)
    service = Running(wiring)
    try:
        assert (await service.call("POST", "/payments", {"user_id": 4}))[0] == 201
        assert (await service.call("PUT", "/payments/4", {"amount": 10}))[0] == 200
        [requests] = [c.handle_batch for c in wiring.consumers if c.queue == ORDER_REQUESTS]
        for _ in range(2):  # the Order Service's resend: settled once, its result sent again
            assert await requests([PaymentRequest(21, 4, Decimal("7.25"))]) == {}
        await broker.window.drain()
        assert [(queue, entry) for queue, _, entry in broker.publisher.published] == \
            [(PAYMENT_RESULTS, PaymentResult(21, OrderStatus.FINISHED).entry())] * 2
        code, body = await service.call("GET", "/payments/4")
        assert code == 200 and body["account"]["balance"] == 2.75 and len(repo.debits) == 1
    finally:
        await service.close()


def assert_equal(value, expected):
    assert value == expected
