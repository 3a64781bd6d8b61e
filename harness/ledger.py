"""The Payments ledger (`account_movements`) checked against the accounts, the inbox and what clients sent.

Pure functions over rows already read (see `harness.invariants.read_snapshot`), so that the checker's own
tests can run thousands of simulated runs in a second. Each function returns a list of problems (strings);
an empty list is a pass.

Why the ledger makes the checker exact: every top-up carries a unique key (its `Idempotency-Key`, else its
`X-Request-ID`, which the gateway passes on as `X-Client-Request-ID`) that the Payments Service stores on the
credit it writes. A top-up whose answer the client
never saw is therefore decided by the ledger (credited, or not), so the money each account must hold is
known to the cent however many answers were lost; there is no "some subset of these may have applied"."""
from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

CREDIT, DEBIT = "credit", "debit"


@dataclass(frozen=True)
class Movement:
    id: int
    user_id: int
    kind: str
    amount: Decimal
    balance: Decimal  # the account's balance after this movement
    order_id: int = None
    request_key: str = None


@dataclass(frozen=True)
class TopUp:
    """A top-up as the client sent it and what it learned: `answered` is True (200 seen), False (a definite
    no: refused or 4xx) or None (no definite answer: it may or may not have been applied)."""
    key: str
    user_id: int
    amount: Decimal
    answered: bool = None


def credits_by_key(movements):
    keyed = defaultdict(list)
    for m in movements:
        if m.kind == CREDIT:
            keyed[m.request_key].append(m)
    return keyed


def top_up_problems(movements, top_ups):
    """Each top-up credited at most once, to its user, with its amount; answered ones credited, refused ones
    not; and no credit the clients never asked for."""
    keyed = credits_by_key(movements)
    problems = []
    for t in top_ups:
        credits = keyed.get(t.key, [])
        if len(credits) > 1:
            problems.append(f"top-up {t.key} credited {len(credits)} times")
        if any((c.user_id, c.amount) != (t.user_id, t.amount) for c in credits):
            problems.append(f"top-up {t.key} of {t.amount} to user {t.user_id} credited as "
                            f"{[(c.user_id, c.amount) for c in credits]}")
        if t.answered is True and not credits:
            problems.append(f"top-up {t.key} answered 200 but never credited")
        if t.answered is False and credits:
            problems.append(f"top-up {t.key} refused but credited")
    sent = {t.key for t in top_ups}
    problems += [f"credit {m.id} ({m.amount} to user {m.user_id}, key {k!r}) from no request sent"
                 for k, credits in keyed.items() if k not in sent for m in credits]
    return problems


def applied_top_ups(movements, top_ups):
    """{user_id: total of the top-ups that were applied}: the answered ones, and of the unanswered ones those
    the ledger holds a credit for (decided exactly, one by one)."""
    keyed = credits_by_key(movements)
    totals = defaultdict(Decimal)
    for t in top_ups:
        if t.answered is True or (t.answered is None and t.key in keyed):
            totals[t.user_id] += t.amount
    return totals


def balance_problems(movements, balances):
    """Per account: balance = sum of credits - sum of debits."""
    net = defaultdict(Decimal)
    for m in movements:
        net[m.user_id] += m.amount if m.kind == CREDIT else -m.amount
    return [f"user {u}: balance {balances.get(u)} != credits - debits {net.get(u, Decimal(0))}"
            for u in sorted(set(net) | set(balances)) if balances.get(u, Decimal(0)) != net.get(u, Decimal(0))]


def running_balance_problems(movements, balances):
    """Per user, in the order the movements were written: each row's balance is the previous one plus its
    credit or minus its debit (from 0), and the last is the account's balance.

    Nothing here checks "never negative", positive amounts or known kinds: the schema's CHECK constraints on
    `accounts` and `account_movements` make those impossible to break, so such a row could never fail."""
    by_user = defaultdict(list)
    for m in sorted(movements, key=lambda m: m.id):
        by_user[m.user_id].append(m)
    problems = []
    for user, rows in sorted(by_user.items()):
        running = Decimal(0)
        for m in rows:
            running += m.amount if m.kind == CREDIT else -m.amount
            if m.balance != running:
                problems.append(f"movement {m.id} (user {user}): balance {m.balance}, previous +/- amount {running}")
                running = m.balance
        if user in balances and rows[-1].balance != balances[user]:
            problems.append(f"user {user}: last movement's balance {rows[-1].balance} != account {balances[user]}")
    return problems


def debit_problems(movements, inbox):
    """The debits are exactly the `FINISHED` requests, once each, for the request's user and amount.
    `inbox` is {order_id: (user_id, amount, status, acked)}. (The schema's unique index allows one debit per
    order; "once each" is checked anyway, so that the checker holds on a schema that lost it.)"""
    debits = defaultdict(list)
    problems = []
    for m in movements:
        if m.kind == DEBIT:
            debits[m.order_id].append(m)
    for order_id, rows in sorted(debits.items(), key=lambda item: str(item[0])):
        request = inbox.get(order_id)
        if len(rows) > 1:
            problems.append(f"order {order_id} debited {len(rows)} times")
        if request is None or request[2] != "FINISHED":
            problems.append(f"order {order_id} debited but {'unknown' if request is None else request[2]}")
        elif any((m.user_id, m.amount) != request[:2] for m in rows):
            problems.append(f"order {order_id} of {request[1]} (user {request[0]}) debited as "
                            f"{[(m.user_id, m.amount) for m in rows]}")
    problems += [f"order {o} FINISHED without a debit" for o, (_, _, status, _) in sorted(inbox.items())
                 if status == "FINISHED" and o not in debits]
    return problems
