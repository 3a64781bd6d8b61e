"""SIGTERM: stop accepting, finish what is in flight, exit cleanly; nothing acknowledged is lost."""
import signal
import threading
from decimal import Decimal

from harness.client import call
from harness.invariants import check_invariants, wait_until_settled


def test_sigterm_under_load_finishes_in_flight_requests_and_loses_nothing(own_stack):
    url = own_stack.url
    call(url, "POST", "/payments", {"user_id": 3})
    call(url, "PUT", "/payments/3", {"amount": 1000})
    replies, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                replies.append(call(url, "POST", "/orders", {"user_id": 3, "amount": 1}, timeout=15))
            except OSError as exc:
                replies.append((None, repr(exc)))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    while len(replies) < 100:
        stop.wait(0.01)
    order_svc = own_stack["order"].popen
    order_svc.send_signal(signal.SIGTERM)
    assert order_svc.wait(timeout=30) == 0, own_stack["order"].log()[-3000:]
    stop.set()
    for thread in threads:
        thread.join()

    assert {code for code, _ in replies} <= {201, 503}, [r for r in replies if r[0] not in (201, 503)]
    assert any(code == 503 for code, _ in replies)
    own_stack.restart("order")
    assert wait_until_settled(own_stack.order_dsn, timeout=30) is not None
    created = [body["order_id"] for code, body in replies if code == 201]
    report = check_invariants(own_stack.order_dsn, own_stack.payment_dsn, {3: Decimal(1000)}, created)
    assert report.ok, report.table()
