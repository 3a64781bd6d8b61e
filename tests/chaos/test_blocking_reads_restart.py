"""A waiting request across a real restart of the PostgreSQL server (`harness.infra`'s cluster, immediate mode: every
connection dropped, the LISTEN connection's too). Like the chaos runs, only with SHOP_CHAOS=1. The same case on a
proxy the test cuts, without touching the shared server: tests/e2e/test_blocking_reads.py."""
import time

from harness.client import call
from harness.stack import Stack
from tests.chaos.conftest import requires_chaos_opt_in
from tests.conftest import wait_for
from tests.e2e.test_blocking_reads import funded_order, gauge, in_background, timed_call, until_waiting


@requires_chaos_opt_in
def test_a_waiter_outlasts_a_postgresql_restart_and_is_answered_once_its_order_is_final():
    with Stack(prefix="shop_chaos") as stack:
        order_id = funded_order(stack)
        waiting = in_background(timed_call, stack.url, f"/orders/{order_id}?wait=30")
        until_waiting(stack["order"], 1)
        stack.infra.pg_restart(immediate=True)
        restarted = time.monotonic()

        def listening_again():
            assert gauge(stack["order"], "shop_listen_connects_total") >= 2
        wait_for(listening_again, timeout=15)
        stack.restart("payment")  # the order's payment, after the restart: its result wakes the waiter
        code, body, took = waiting()
        assert (code, body["order"]["status"]) == (200, "FINISHED") and took < 30
        assert time.monotonic() - restarted < 20
        assert call(stack.url, "GET", f"/orders/{order_id}?wait=1")[1]["order"]["status"] == "FINISHED"
