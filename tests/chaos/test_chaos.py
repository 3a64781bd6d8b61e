"""Chaos runs: every part killed, frozen or restarted under load, then every invariant checked."""
import sys
import time

from harness.chaos.faults import KINDS
from harness.chaos.runner import Config, print_outcome, run
from tests.chaos.conftest import requires_chaos_opt_in

BROKEN_PAYMENTS = {"payment": [sys.executable, "-m", "tests.chaos.broken_payment_svc"]}


def run_and_print(config):
    outcome = run(config)
    print_outcome(outcome)
    return outcome


@requires_chaos_opt_in
def test_short_chaos_run_every_kind_of_fault_keeps_every_invariant():
    started = time.monotonic()
    outcome = run_and_print(Config(orders=500, faults=2 * len(KINDS) - 4, seed=4))
    assert outcome.ok, outcome.report.table()
    assert outcome.summary["orders sent"] >= 500
    assert set(outcome.summary["faults by kind"]) == set(KINDS) and outcome.summary["faults"] >= 12
    assert time.monotonic() - started < 300


def payment_kills(**overrides):
    """Payments killed while orders flow, with fast resends so that requests arrive twice: poll only, so that
    orders stay pending for about a second (the fast path settles them long before a 0.2 s resend)."""
    return Config(orders=150, faults=3, seed=2, kinds=("kill payment",), rate=40, gap=(0.5, 1.5),
                  env={"FAST_PATH": "0", "RESEND_DELAY": "0.2", "RESEND_DELAY_MAX": "0.5"}, **overrides)


def test_checker_passes_the_real_payments_service_under_payment_kills():
    outcome = run_and_print(payment_kills())
    assert outcome.ok, outcome.report.table()


def test_checker_catches_a_payments_worker_that_debits_repeated_requests():
    outcome = run_and_print(payment_kills(commands=BROKEN_PAYMENTS))
    assert not outcome.ok
    assert not outcome.report.check("money conserved per user (top-ups applied = balance + FINISHED)").ok
