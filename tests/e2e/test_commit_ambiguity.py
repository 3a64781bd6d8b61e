"""A connection lost while COMMIT is under way: the transaction may have been applied, so the service must
not run it again (a second order, a second credit) but answer 503 and let the client decide."""
import threading

import pytest

from harness.client import call
from harness.infra import INFRA
from harness.invariants import query
from harness.proxy import TcpProxy
from harness.stack import Stack


class CutFirstCommitAfter:
    """Cuts the first connection that sends COMMIT for a transaction that sent `marker` (once, while armed). Only
    the transaction's own statements count: a worker's transaction on a connection that sent the marker before
    (a background step's COMMIT every second) is left alone."""

    def __init__(self, marker):
        self.marker, self.armed, self._lock = marker, False, threading.Lock()

    def __call__(self, sent):
        sent = sent.rstrip(b"\0")
        if not sent.endswith(b"COMMIT"):
            return False
        transaction = sent[:-len(b"COMMIT")].rsplit(b"COMMIT", 1)[-1]
        with self._lock:
            if self.armed and self.marker in transaction:
                self.armed = False
                return True
            return False


@pytest.fixture
def stack_with_cut(request):
    """A stack whose services reach PostgreSQL through a proxy that cuts one COMMIT after `marker`."""
    cut = CutFirstCommitAfter(request.param)
    proxy = TcpProxy(INFRA.pg_port, cut_after=cut).up()
    stack = Stack(prefix="shop_e2e")
    for name, key in (("order", "ORDER_DB_DSN"), ("payment", "PAYMENT_DB_DSN")):
        stack[name].env[key] = stack[name].env[key].replace(f":{INFRA.pg_port}/", f":{proxy.port}/")
    try:
        yield stack.start(), cut
    finally:
        proxy.down()
        stack.close()


# The statement placing orders is prepared on each connection (PREPARE insert_orders_..., then EXECUTE): its name.
@pytest.mark.parametrize("stack_with_cut", [b"insert_orders_"], indirect=True)
def test_order_whose_commit_reply_is_lost_is_not_created_twice(stack_with_cut):
    stack, cut = stack_with_cut
    cut.armed = True
    code, body = call(stack.url, "POST", "/orders", {"user_id": 3, "amount": 5, "description": "once"})
    assert not cut.armed, "the COMMIT was not cut"
    assert query(stack.order_dsn, "SELECT count(*) FROM orders WHERE description = 'once'") == [(1,)]
    assert (code, body["message"]) == (503, "Database temporarily unavailable.")


# A top-up's ledger row names its client's request id; the settling statement's debits do not.
@pytest.mark.parametrize("stack_with_cut", [b"client_request_id"], indirect=True)
def test_top_up_whose_commit_reply_is_lost_is_not_credited_twice(stack_with_cut):
    stack, cut = stack_with_cut
    assert call(stack.url, "POST", "/payments", {"user_id": 3})[0] == 201
    cut.armed = True
    code, _ = call(stack.url, "PUT", "/payments/3", {"amount": 10})
    assert not cut.armed, "the COMMIT was not cut"
    assert call(stack.url, "GET", "/payments/3")[1]["account"]["balance"] == 10
    assert code == 503
