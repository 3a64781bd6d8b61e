"""Deliberately broken Payments Services, one per row of the invariant checker, for proving that each row fails
when its invariant breaks (tests/chaos/test_checker_variants.py).

`python -m tests.chaos.broken_payment_svc VARIANT` runs the real service with one patch from `VARIANTS` (the
default, `double-debit`, is the first one the checker was proven against). Production code is untouched; the
patches live only here, applied to what the service looks up at call time: the methods of its repository
(`PostgresPayments`), the text of its settling statement (`repo.SETTLE`, `patch_settling`) and the module
attributes of `service` and `messaging`."""
import dataclasses
import sys
from decimal import Decimal

from common.runtime.lifecycle import run
from payment_svc import messaging, repo, service
from payment_svc.bootstrap import PaymentService
from payment_svc.repo import PostgresPayments


def patch_settling(text, replacement):
    """Change one piece of the settling statement's SQL (compiled once, at import: see `payment_svc.repo`)."""
    assert repo.SETTLE.sql.count(text) == 1, f"not once in the settling statement: {text!r}"
    repo.SETTLE.sql = repo.SETTLE.sql.replace(text, replacement)


def double_debit():
    """Settling treats every request as new, i.e. debits before checking the inbox status, so a repeated
    request (a redelivery, or the Order Service's resend) is charged again. Its ledger keeps one debit per order
    (as code that swallowed the unique index's refusal would): the repeat's row is never written."""
    patch_settling("coalesce(locked.status, %(coalesce_1)s)", "%(coalesce_1)s")  # a repeat settled on receipt
    # ... and one marked unacked again by the store (FAST_PATH=0), settled by the inbox worker
    patch_settling("locked.amount AS amount, locked.status AS status,", "locked.amount AS amount, 'NEW' AS status,")
    patch_settling("WHERE decided.debited ORDER BY decided.order_id)",
                   "WHERE decided.debited ORDER BY decided.order_id ON CONFLICT DO NOTHING)")


def status_swapped():
    """Results travel with the opposite status: the Order Service records FINISHED for CANCELLED and back. Both
    senders are patched: the relay (`service`) and the fast path (`messaging.SettleAtOnce`)."""
    real_outgoing = messaging.outgoing_results
    swap = {"FINISHED": "CANCELLED", "CANCELLED": "FINISHED"}
    service.outgoing_results = messaging.outgoing_results = \
        lambda rows: real_outgoing([{**row, "status": swap[row["status"]]} for row in rows])


def amount_truncated():
    """Requests are stored with their amount cut to whole units: the inbox no longer matches the orders."""
    real_store, real_settle = PostgresPayments.store_requests, PostgresPayments.settle

    def truncated(requests):
        return [dataclasses.replace(r, amount=max(Decimal(1), r.amount // 1)) for r in requests]

    async def store_truncated(repo, cur, requests):
        await real_store(repo, cur, truncated(requests))

    async def settle_truncated(repo, cur, requests, *args):
        return await real_settle(repo, cur, truncated(requests), *args)
    PostgresPayments.store_requests, PostgresPayments.settle = store_truncated, settle_truncated


def results_lost():
    """Results of odd-numbered orders are dropped as they are queued: those orders never become final."""
    real_settle = PostgresPayments.settle

    async def settle_losing(repo, cur, *args):
        settled = await real_settle(repo, cur, *args)
        lost = [row["id"] for row in settled.queued if row["order_id"] % 2]
        if lost:
            await repo.delete_outbox(cur, lost)
        return settled._replace(queued=[row for row in settled.queued if not row["order_id"] % 2])
    PostgresPayments.settle = settle_losing


def outbox_kept():
    """Results confirmed by the broker are never deleted from `outbox_ps` (and are sent again and again)."""
    real_settle = PostgresPayments.settle

    async def keep(repo, cur, ids):
        return None

    async def settle_keeping(repo, cur, requests, user_ids, pick, due_in, done_ids=()):
        return await real_settle(repo, cur, requests, user_ids, pick, due_in)
    PostgresPayments.delete_outbox, PostgresPayments.settle = keep, settle_keeping


def debits_unrecorded():
    """Debits change the balance but write no ledger row."""
    patch_settling("INSERT INTO account_movements (user_id, kind, order_id, amount, balance) SELECT", "SELECT")


def debit_balance_before():
    """Each debit's ledger row carries the balance before it instead of after it."""
    patch_settling("decided.balance AS balance \nFROM decided \nWHERE decided.debited ORDER BY",
                   "decided.balance + decided.amount AS balance \nFROM decided \nWHERE decided.debited ORDER BY")


def credit_key_lost():
    """Top-ups are credited without the keys that name their request (its Idempotency-Key or request id, and the
    client's own request id): the checker matches each credit to the client's request by them."""
    real_credit = PostgresPayments.credit

    async def credit_anonymously(repo, cur, user_id, amount, balance, origin):
        return await real_credit(repo, cur, user_id, amount, balance,
                                 origin._replace(request_key=None, client_request_id=None))
    PostgresPayments.credit = credit_anonymously


def ghost_finished():
    """A request of a user without an account is FINISHED (debited from nothing) instead of CANCELLED."""
    patch_settling("ELSE %(param_3)s END AS anon_1",
                   "WHEN (before.balance IS NULL) THEN %(param_2)s ELSE %(param_3)s END AS anon_1")


VARIANTS = {f.__name__.replace("_", "-"): f for f in (
    double_debit, status_swapped, amount_truncated, results_lost, outbox_kept, debits_unrecorded,
    debit_balance_before, credit_key_lost, ghost_finished)}


if __name__ == "__main__":
    VARIANTS[sys.argv[1] if len(sys.argv) > 1 else "double-debit"]()
    run(PaymentService)
