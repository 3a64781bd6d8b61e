"""A deliberately broken Payments Service, for proving that the chaos checker catches a double debit.

`python -m tests.chaos.broken_payment_svc` runs the real service with one change: its inbox worker treats
every request as new, i.e. it debits before checking the inbox status, so a repeated request (a redelivery,
or the Order Service's resend) is charged again. It writes no ledger rows either: the ledger's unique debit per
order would otherwise refuse the second debit and roll it back. Production code is untouched; the patch lives
only here."""
from common.lifecycle import run
from payment_svc import service
from payment_svc.app import PaymentService

real_settle = service.settle


def settle_ignoring_status(rows, balances):
    settlement = real_settle([{**row, "status": "NEW"} for row in rows], balances)
    settlement.debits.clear()
    return settlement


if __name__ == "__main__":
    service.settle = settle_ignoring_status
    run(PaymentService)
