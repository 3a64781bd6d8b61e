"""Deliberately broken Payments Services, one per row of the invariant checker, for proving that each row fails
when its invariant breaks (tests/chaos/test_checker_variants.py).

`python -m tests.chaos.broken_payment_svc VARIANT` runs the real service with one patch from `VARIANTS` (the
default, `double-debit`, is the first one the checker was proven against). Production code is untouched; the
patches live only here, applied to what the service looks up at call time: the methods of its repository
(`PostgresPayments`) and the module attributes of `service` and `messaging`."""
import dataclasses
import sys
from decimal import Decimal

from common.runtime.lifecycle import run
from payment_svc import messaging, service
from payment_svc.bootstrap import PaymentService
from payment_svc.repo import PostgresPayments


def double_debit():
    """The inbox worker treats every request as new, i.e. debits before checking the inbox status, so a
    repeated request (a redelivery, or the Order Service's resend) is charged again. Its ledger keeps one debit
    per order (as code that swallowed the unique index's refusal would): the repeat's row is never written."""
    real_settle, real_record = service.settle, PostgresPayments.record_debits

    def settle_ignoring_status(rows, balances):
        return real_settle([{**row, "status": "NEW"} for row in rows], balances)

    async def record_first_debits(repo, cur, debits):
        await cur.execute("SELECT order_id FROM account_movements WHERE kind = 'debit' AND order_id = ANY(%s)",
                          ([d.order_id for d in debits],))
        recorded = {order_id for (order_id,) in await cur.fetchall()}
        await real_record(repo, cur, [d for d in debits if d.order_id not in recorded])
    service.settle, PostgresPayments.record_debits = settle_ignoring_status, record_first_debits


def status_swapped():
    """Results travel with the opposite status: the Order Service records FINISHED for CANCELLED and back. Both
    senders are patched: the relay (`service`) and the fast path (`messaging.SettleAtOnce`)."""
    real_outgoing = messaging.outgoing_results
    swap = {"FINISHED": "CANCELLED", "CANCELLED": "FINISHED"}
    service.outgoing_results = messaging.outgoing_results = \
        lambda rows: real_outgoing([{**row, "status": swap[row["status"]]} for row in rows])


def amount_truncated():
    """Requests are stored with their amount cut to whole units: the inbox no longer matches the orders."""
    real_store = PostgresPayments.store_requests

    async def store_truncated(repo, cur, requests):
        await real_store(repo, cur, [dataclasses.replace(r, amount=max(Decimal(1), r.amount // 1)) for r in requests])
    PostgresPayments.store_requests = store_truncated


def results_lost():
    """Results of odd-numbered orders are dropped as they are queued: those orders never become final."""
    real_settle_inbox = PostgresPayments.settle_inbox

    async def settle_inbox_losing(repo, cur, statuses, traces, due_in):
        queued = await real_settle_inbox(repo, cur, statuses, traces, due_in)
        lost = [row["id"] for row in queued if row["order_id"] % 2]
        if lost:
            await repo.delete_outbox(cur, lost)
        return [row for row in queued if not row["order_id"] % 2]
    PostgresPayments.settle_inbox = settle_inbox_losing


def outbox_kept():
    """Results confirmed by the broker are never deleted from `outbox_ps` (and are sent again and again)."""
    async def keep(repo, cur, ids):
        return None
    PostgresPayments.delete_outbox = keep


def debits_unrecorded():
    """Debits change the balance but write no ledger row."""
    async def record_nothing(repo, cur, debits):
        return None
    PostgresPayments.record_debits = record_nothing


def debit_balance_before():
    """Each debit's ledger row carries the balance before it instead of after it."""
    real_record = PostgresPayments.record_debits

    async def record_before(repo, cur, debits):
        await real_record(repo, cur, [dataclasses.replace(d, balance=d.balance + d.amount) for d in debits])
    PostgresPayments.record_debits = record_before


def credit_key_lost():
    """Top-ups are credited without their request key."""
    real_credit = PostgresPayments.credit

    async def credit_anonymously(repo, cur, user_id, amount, balance, origin):
        return await real_credit(repo, cur, user_id, amount, balance, origin._replace(request_key=None))
    PostgresPayments.credit = credit_anonymously


def ghost_finished():
    """A request of a user without an account is FINISHED (debited from nothing) instead of CANCELLED."""
    real_settle = service.settle

    def settle_ghosts(rows, balances):
        settlement = real_settle(rows, balances)
        for row in rows:
            if row["status"] == "NEW" and row["user_id"] not in balances:
                settlement.statuses[row["order_id"]] = "FINISHED"
        return settlement
    service.settle = settle_ghosts


VARIANTS = {f.__name__.replace("_", "-"): f for f in (
    double_debit, status_swapped, amount_truncated, results_lost, outbox_kept, debits_unrecorded,
    debit_balance_before, credit_key_lost, ghost_finished)}


if __name__ == "__main__":
    VARIANTS[sys.argv[1] if len(sys.argv) > 1 else "double-debit"]()
    run(PaymentService)
