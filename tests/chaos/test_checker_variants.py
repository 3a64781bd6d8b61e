"""The chaos checker against deliberately broken Payments Services (tests/chaos/broken_payment_svc.py): each
row it claims to check fails for the bug it is named after, with the fast path on and off where the broken code
runs on both paths. The real service passes the same run (tests/chaos/test_chaos.py).

Thirteen short runs (about 40 s each on a quiet machine): behind SHOP_CHECKER_VARIANTS=1, outside the default
CI run, which keeps the double-debit case (test_chaos.py)."""
import os
import sys

import pytest

from harness.chaos.runner import Config, print_outcome, run

CONSERVED = "money conserved per user (top-ups applied = balance + FINISHED)"
TOP_UPS = "top-ups credited exactly as clients learned (ledger, by request key)"
LEDGER_BALANCE = "ledger: balance = credits - debits per account"
LEDGER_DEBITS = "ledger: debits are the FINISHED orders, once each, same amount"
RUNNING = "ledger: each balance = previous +/- amount, the last = the account's"
STATUS = "order status = inbox status"
INBOX = "inbox matches orders (user, amount), no unknown orders"
FINAL = "every order final"
PENDING = "outboxes empty, inbox acked"
GHOSTS = "no debit without an account"

# variant -> (the rows that must fail, fast-path settings to run it with)
VARIANTS = {
    "double-debit": ({CONSERVED, LEDGER_BALANCE, RUNNING}, ("0", "1")),
    "status-swapped": ({STATUS}, ("0", "1")),
    "results-lost": ({FINAL, PENDING}, ("0", "1")),
    "outbox-kept": ({PENDING}, ("0", "1")),
    "amount-truncated": ({INBOX}, ("1",)),
    "debits-unrecorded": ({LEDGER_BALANCE, LEDGER_DEBITS, RUNNING}, ("1",)),
    "debit-balance-before": ({RUNNING}, ("1",)),
    "credit-key-lost": ({TOP_UPS}, ("1",)),
    "ghost-finished": ({GHOSTS, CONSERVED, LEDGER_DEBITS}, ("1",)),
}
CASES = [(variant, fast_path) for variant, (_, settings) in VARIANTS.items() for fast_path in settings]


def broken_run(variant, fast_path):
    """Payments killed a few times while orders and top-ups flow, resends fast so that requests arrive twice;
    a short settle deadline, since some variants leave work pending for ever."""
    return Config(orders=120, faults=2, seed=2, kinds=("kill payment",), rate=40, gap=(0.5, 1.5), settle_timeout=20,
                  commands={"payment": [sys.executable, "-m", "tests.chaos.broken_payment_svc", variant]},
                  env={"FAST_PATH": fast_path, "RESEND_DELAY": "0.2", "RESEND_DELAY_MAX": "0.5"})


@pytest.mark.skipif(os.environ.get("SHOP_CHECKER_VARIANTS") != "1",
                    reason="13 chaos runs; set SHOP_CHECKER_VARIANTS=1 to run them")
@pytest.mark.parametrize("variant, fast_path", CASES, ids=[f"{v}-fast_path={f}" for v, f in CASES])
def test_each_checker_row_catches_its_broken_payments_service(variant, fast_path):
    outcome = run(broken_run(variant, fast_path))
    print_outcome(outcome)
    failed = {c.name for c in outcome.report.checks if not c.ok}
    assert VARIANTS[variant][0] <= failed, outcome.report.table()
