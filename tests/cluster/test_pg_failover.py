"""The stack on a PostgreSQL primary + synchronous standby (scripts/pg-ha.sh): orders and top-ups keep
flowing while the primary's machine is lost, the manager promotes the standby, the services find it by
themselves, the old primary comes back as the standby, and a second failover goes back to it.

Short form by default (two failovers, ~20 orders/s). Long form:
    SHOP_PG_FAILOVER_ROUNDS=10 SHOP_PG_FAILOVER_RATE=40 ./test.sh tests/cluster/test_pg_failover.py -s"""
import os

from harness.chaos.checks import check_data
from harness.chaos.workload import ACKED, Client, Journal, Load
from harness.invariants import wait_until_settled
from harness.stack import Stack
from tests.conftest import wait_for

ROUNDS = int(os.environ.get("SHOP_PG_FAILOVER_ROUNDS", "2"))
RATE = float(os.environ.get("SHOP_PG_FAILOVER_RATE", "20"))


def acked_orders(journal, since=0.0):
    """Acknowledged orders whose answer came after `since` (time.monotonic())."""
    return [r for r in journal.of_kind("order") if r.result == ACKED and r.attempts[-1].ended > since]


def first_order_acknowledged_after(journal, moment):
    """Seconds from `moment` to the first acknowledgement of an order placed (first attempt) after it."""
    def first():
        answered = [r.attempts[-1].ended for r in acked_orders(journal, moment) if r.attempts[0].started >= moment]
        assert answered
        return min(answered) - moment
    return wait_for(first, timeout=60)


def describe(number, failover, journal):
    answers = [a.outcome for r in journal.of_kind("order") for a in r.attempts
               if failover.killed_at <= a.started and a.ended <= failover.promoted_at]
    rejoined = ("" if failover.seconds_to_standby is None else
                f", {failover.killed} standby again {failover.seconds_to_standby:.1f} s later")
    return (f"failover {number}: {failover.killed} lost, {failover.promoted} primary after "
            f"{failover.seconds_to_primary:.1f} s{rejoined}; first order placed after the kill acknowledged after "
            f"{first_order_acknowledged_after(journal, failover.killed_at):.1f} s, first placed after the "
            f"promotion after {first_order_acknowledged_after(journal, failover.promoted_at):.1f} s; order attempts "
            f"answered between kill and promotion: {answers.count(201)} × 201, {answers.count(503)} × 503")


def test_orders_and_top_ups_survive_failover_and_failback(pg_ha, ha_infra):
    pg_ha.wait_settled()
    journal = Journal()
    with Stack(prefix="shop_cluster", infra=ha_infra, extra_env={"LOG_LEVEL": "WARNING"}) as stack:
        load = Load(Client(stack.url, journal, stack.run_id), users=list(range(1, 21)), ghosts=[901, 902],
                    seed=13, clients=6, rate=RATE)
        load.setup_accounts()
        load.start()
        failovers = []
        try:
            wait_for(lambda: len(acked_orders(journal)) >= 20 or None, timeout=60)
            for round_ in range(ROUNDS):
                # The last lost node is started again, but not awaited: every earlier one came back as the
                # standby (the next failover needs it), and the fixture destroys the pair after this test, the
                # last one of the session (file names sort it after test_host_choice.py).
                failovers.append(pg_ha.failover(rejoin=round_ < ROUNDS - 1))
                print(describe(round_ + 1, failovers[-1], journal))
                if round_ == 0:
                    # A service starting after a failover finds the primary although the first host listed
                    # is now the standby, and applies its schema there (under the advisory lock).
                    stack["payment"].stop()
                    stack.restart("payment")
        finally:
            load.finish()
        settled = wait_until_settled(stack.order_dsn, 120, stack.payment_dsn)
        report = check_data(stack.order_dsn, stack.payment_dsn, journal)
        orders = journal.of_kind("order")
        print(f"\n{len(orders)} order requests ({len(acked_orders(journal))} acknowledged), "
              f"{len(journal.of_kind('top_up'))} top-ups; settled {settled} s after the load\n{report.table()}")

        assert settled is not None, "orders still pending 120 s after the load stopped"
        assert report.ok, report.table()
        # Each failover went back to the node the one before had lost (it had come back as the standby).
        assert all(later.promoted == earlier.killed for earlier, later in zip(failovers, failovers[1:]))
