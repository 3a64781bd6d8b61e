"""The invariant checker itself: a consistent run passes every row, each row fails for the bug it is named
after, and a double debit is caught however many top-ups went unanswered."""
import dataclasses
import random
from decimal import Decimal

import pytest

from harness.invariants import check_snapshot
from harness.ledger import CREDIT, DEBIT, Movement
from tests.unit.ledger_fixtures import busy_account

CONSERVED = "money conserved per user (top-ups applied = balance + FINISHED)"
TOP_UPS = "top-ups credited exactly as clients learned (ledger, by request key)"
LEDGER_BALANCE = "ledger: balance = credits - debits per account"
LEDGER_DEBITS = "ledger: debits are the FINISHED orders, once each, same amount"
RUNNING = "ledger: each balance = previous +/- amount, the last = the account's"


def check(run, snapshot=None, top_ups=None, created=None):
    snapshot = snapshot or run.snapshot()
    created = list(snapshot.orders) if created is None else created
    return check_snapshot(snapshot, {}, created, None, run.top_ups if top_ups is None else top_ups)


def failing(report):
    return {c.name for c in report.checks if not c.ok}


def finished_order(run):
    return next(o for o, (_, _, status, _) in run.orders.items() if status == "FINISHED")


def test_a_consistent_run_with_many_unanswered_top_ups_passes_every_row():
    run = busy_account(seed=1, unanswered=40)
    report = check(run)
    assert report.ok, report.table()
    assert len(report.checks) >= 12


def double_debit_balance_only(run):
    """The inbox worker debits a repeated request again, writing no second ledger row."""
    order = finished_order(run)
    user, amount = run.orders[order][:2]
    run.balances[user] -= amount


def double_debit_with_ledger_row(run):
    """... and writes a second debit row for it (as if the ledger's uniqueness were missing)."""
    order = finished_order(run)
    user, amount = run.orders[order][:2]
    run.balances[user] -= amount
    run.movements.append(Movement(len(run.movements) + 1, user, DEBIT, amount, run.balances[user], order))


def credit_twice_under_one_key(run):
    """A retried top-up with the same Idempotency-Key applied again."""
    first = next(m for m in run.movements if m.kind == CREDIT)
    run.balances[first.user_id] += first.amount
    run.movements.append(dataclasses.replace(first, id=len(run.movements) + 1, balance=run.balances[first.user_id]))


def credit_without_request(run):
    run.balances[2] += Decimal("10.00")
    run.movements.append(Movement(len(run.movements) + 1, 2, CREDIT, Decimal("10.00"), run.balances[2], None, "x"))


def credited_wrong_amount(run):
    """The balance and the ledger agree, but the top-up was credited a cent more than sent."""
    user = 3
    credit = next(m for m in run.movements if m.kind == CREDIT and m.user_id == user)
    index = run.movements.index(credit)
    run.movements[index] = dataclasses.replace(credit, amount=credit.amount + Decimal("0.01"))
    run.movements[index + 1:] = [dataclasses.replace(m, balance=m.balance + Decimal("0.01"))
                                 if m.user_id == user else m for m in run.movements[index + 1:]]
    run.balances[user] += Decimal("0.01")


def answered_top_up_lost(run):
    """A top-up answered 200 whose credit (and balance change) was rolled back."""
    first = next(m for m in run.movements if m.kind == CREDIT and m.user_id == 2)
    index = run.movements.index(first)
    run.movements[index:] = [dataclasses.replace(m, balance=m.balance - first.amount) if m.user_id == 2 else m
                             for m in run.movements[index + 1:]]
    run.balances[2] -= first.amount


def ledger_balance_before_not_after(run):
    """Each movement records the balance before it instead of after it."""
    run.movements[:] = [dataclasses.replace(m, balance=m.balance - m.amount if m.kind == CREDIT
                                            else m.balance + m.amount) for m in run.movements]


def debit_row_missing(run):
    """The balance is debited, the ledger row never written."""
    order = finished_order(run)
    run.movements[:] = [m for m in run.movements if m.order_id != order]


def debit_row_wrong_amount(run):
    order = finished_order(run)
    run.movements[:] = [dataclasses.replace(m, amount=m.amount - Decimal("0.01")) if m.order_id == order else m
                        for m in run.movements]


def debit_for_cancelled_order(run):
    """A cancelled order debited in the ledger (and its balance), while the inbox says CANCELLED."""
    order = next(o for o, (_, _, status, _) in run.orders.items() if status == "CANCELLED" and
                 run.orders[o][0] in run.balances)
    user, amount = run.orders[order][:2]
    run.balances[user] += Decimal("100000")
    run.movements.append(Movement(len(run.movements) + 1, user, CREDIT, Decimal("100000"), run.balances[user],
                                  None, run.top_ups[0].key))
    run.balances[user] -= amount
    run.movements.append(Movement(len(run.movements) + 1, user, DEBIT, amount, run.balances[user], order))


def finished_for_ghost(run):
    """A user without an account gets an order FINISHED."""
    ghost = max(u for u, *_ in run.orders.values())
    order = next(o for o, (u, *_) in run.orders.items() if u == ghost)
    run.orders[order] = (*run.orders[order][:2], "FINISHED", run.orders[order][3])
    run.inbox[order] = (*run.inbox[order][:2], "FINISHED", True)


def order_status_differs(run):
    order = finished_order(run)
    run.orders[order] = (*run.orders[order][:2], "CANCELLED", run.orders[order][3])


def order_left_new(run):
    order = finished_order(run)
    run.orders[order] = (*run.orders[order][:2], "NEW", run.orders[order][3])


def inbox_unknown_order(run):
    run.inbox[10**9] = (1, Decimal("1.00"), "CANCELLED", True)


BREAKAGES = {
    double_debit_balance_only: {CONSERVED, LEDGER_BALANCE, RUNNING},
    double_debit_with_ledger_row: {CONSERVED, LEDGER_DEBITS},
    credit_twice_under_one_key: {TOP_UPS},
    credit_without_request: {TOP_UPS, CONSERVED},
    credited_wrong_amount: {TOP_UPS, CONSERVED},
    answered_top_up_lost: {TOP_UPS, CONSERVED},
    ledger_balance_before_not_after: {RUNNING},
    debit_row_missing: {LEDGER_BALANCE, LEDGER_DEBITS, RUNNING},
    debit_row_wrong_amount: {LEDGER_DEBITS, LEDGER_BALANCE},
    debit_for_cancelled_order: {LEDGER_DEBITS, TOP_UPS},
    finished_for_ghost: {"no debit without an account", CONSERVED, LEDGER_DEBITS},
    order_status_differs: {"order status = inbox status"},
    order_left_new: {"every order final"},
    inbox_unknown_order: {"inbox matches orders (user, amount), no unknown orders"},
}


@pytest.mark.parametrize("breakage", BREAKAGES, ids=lambda b: b.__name__)
def test_each_row_fails_for_the_bug_it_is_named_after(breakage):
    run = busy_account(seed=7, unanswered=20)
    breakage(run)
    report = check(run)
    assert BREAKAGES[breakage] <= failing(report), report.table()


def test_orders_rows_fail_for_a_lost_acknowledged_order_and_an_order_nobody_asked_for():
    run = busy_account(seed=3)
    snapshot = run.snapshot()
    lost = check(run, snapshot, created=list(snapshot.orders) + [10**9])
    assert "acknowledged orders all present" in failing(lost)
    extra = check(run, snapshot, created=list(snapshot.orders)[1:])
    assert "unacknowledged orders only from unanswered requests" in failing(extra)


def test_pending_work_fails_the_outbox_row():
    run = busy_account(seed=4)
    snapshot = run.snapshot()
    snapshot.pending["outbox_ps"] = 1
    assert "outboxes empty, inbox acked" in failing(check(run, snapshot))


def subset_range_would_pass(run):
    """What the checker before the ledger did beyond 16 unanswered top-ups: was the unexplained credit of
    user 1 within [0, sum of unanswered]? (Kept here only to show these trials are hard.)"""
    user = 1
    answered = sum(t.amount for t in run.top_ups if t.user_id == user and t.answered)
    unanswered = sum(t.amount for t in run.top_ups if t.user_id == user and t.answered is None)
    debits = sum(a for u, a, s, _ in run.inbox.values() if u == user and s == "FINISHED")
    return 0 <= run.balances[user] + debits - answered <= unanswered


def test_a_double_debit_is_caught_in_every_trial_with_many_unanswered_top_ups():
    trials, hidden_from_range_check = 300, 0
    for seed in range(trials):
        rng = random.Random(seed)
        run = busy_account(seed, unanswered=rng.randint(17, 60), users=1)
        assert check(run).ok, f"seed {seed}: {check(run).table()}"
        double_debit = rng.choice([double_debit_balance_only, double_debit_with_ledger_row])
        double_debit(run)
        report = check(run)
        assert not report.check(CONSERVED).ok, f"seed {seed} ({double_debit.__name__}) hid a double debit"
        hidden_from_range_check += subset_range_would_pass(run)
    # The trials are ones a range check could not decide: most of them would have hidden the double debit.
    assert hidden_from_range_check > trials / 2
