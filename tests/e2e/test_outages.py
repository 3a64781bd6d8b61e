"""Parts stopped or killed: the gateway degrades to 503 and everything resumes without a restart."""
import signal
from decimal import Decimal

from harness.client import call
from harness.invariants import check_invariants, pending_count, wait_until_settled
from tests.conftest import wait_for


def test_gateway_answers_503_when_a_backend_is_down_and_recovers_by_itself(own_stack):
    own_stack["order"].kill()
    own_stack["payment"].kill()
    assert call(own_stack.url, "GET", "/orders/1") == \
        (503, {"status": "Fail", "message": "Order Service temporarily unavailable."})
    assert call(own_stack.url, "GET", "/payments/1") == \
        (503, {"status": "Fail", "message": "Payments Service temporarily unavailable."})
    own_stack.restart("order")
    own_stack.restart("payment")
    assert call(own_stack.url, "GET", "/orders/1")[0] == 404
    assert call(own_stack.url, "GET", "/payments/1")[0] == 404


def test_services_killed_mid_flow_finish_pending_orders_after_restart(own_stack):
    url = own_stack.url
    call(url, "POST", "/payments", {"user_id": 7})
    call(url, "PUT", "/payments/7", {"amount": 100})
    own_stack["payment"].kill()
    ids = [call(url, "POST", "/orders", {"user_id": 7, "amount": 30})[1]["order_id"] for _ in range(5)]
    assert pending_count(own_stack.order_dsn) == 5
    own_stack["order"].popen.send_signal(signal.SIGKILL)
    own_stack["order"].popen.wait()
    own_stack.restart("payment")
    own_stack.restart("order")
    assert wait_until_settled(own_stack.order_dsn, timeout=30, payment_db=own_stack.payment_dsn) is not None
    report = check_invariants(own_stack.order_dsn, own_stack.payment_dsn, {7: Decimal(100)}, ids)
    assert report.ok, report.table()
    statuses = wait_for(lambda: [call(url, "GET", f"/orders/{i}")[1]["order"]["status"] for i in ids])
    assert statuses == ["FINISHED"] * 3 + ["CANCELLED"] * 2
