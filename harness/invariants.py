"""The contract's invariants, checked by reading both services' databases directly.

One helper for every test of correctness: the e2e tests, the chaos runner and the benchmark. A database is
given as a DSN (read with psycopg2) or as any object with `query(sql, params=None)` returning rows (the
chaos runner's compose mode reads through `psql` in the container)."""
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg2

from harness.ledger import (
    DEBIT,
    Movement,
    applied_top_ups,
    balance_problems,
    debit_problems,
    running_balance_problems,
    top_up_problems,
)

# A database that cannot be read right now (psycopg2, or a failing `psql` command in compose mode).
UNREACHABLE = (psycopg2.OperationalError, RuntimeError)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    checks: list = field(default_factory=list)

    @property
    def ok(self):
        return all(c.ok for c in self.checks)

    def add(self, name, problems, detail_ok=""):
        problems = list(problems)
        detail = "; ".join(map(str, problems[:5])) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")
        self.checks.append(Check(name, not problems, detail or detail_ok))

    def check(self, name):
        return next(c for c in self.checks if c.name == name)

    def table(self):
        width = max(len(c.name) for c in self.checks)
        lines = [f"{'check'.ljust(width)}  result  detail", "-" * (width + 40)]
        lines += [f"{c.name.ljust(width)}  {'PASS' if c.ok else 'FAIL'}    {c.detail}" for c in self.checks]
        return "\n".join(lines)


class Postgres:
    """Reads one database with a short-lived psycopg2 connection per query."""

    def __init__(self, dsn):
        self.dsn = dsn

    def query(self, sql, params=None):
        conn = psycopg2.connect(self.dsn, connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()


def reader(db):
    return db if hasattr(db, "query") else Postgres(db)


def query(db, sql, params=None):
    return reader(db).query(sql, params)


def pending_count(order_db):
    """Orders not yet final."""
    return query(order_db, "SELECT count(*) FROM orders WHERE status = 'NEW'")[0][0]


def pending_work(order_db, payment_db):
    """{what: count} of everything still in flight: orders not final, outbox rows, unacked inbox rows."""
    (new, outbox_os), = query(order_db, "SELECT (SELECT count(*) FROM orders WHERE status = 'NEW'), "
                                        "(SELECT count(*) FROM outbox_os)")
    (outbox_ps, unacked), = query(payment_db, "SELECT (SELECT count(*) FROM outbox_ps), "
                                              "(SELECT count(*) FROM inbox WHERE NOT acked)")
    return {"orders NEW": new, "outbox_os": outbox_os, "outbox_ps": outbox_ps, "inbox unacked": unacked}


def wait_until_settled(order_db, timeout, payment_db=None):
    """Wait (bounded) until no order is pending (and, given `payment_db`, nothing at all is in flight);
    return the seconds it took, or None on timeout. A database briefly unreachable counts as not settled.
    Pass `payment_db` before `check_invariants`: an order can be final while the Payments outbox still holds
    its result, deleted only once the broker confirmed it (CI saw `1 outbox_ps` when the test did not wait)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if payment_db is None and pending_count(order_db) == 0:
                return time.monotonic() - start
            if payment_db is not None and not any(pending_work(order_db, payment_db).values()):
                return time.monotonic() - start
        except UNREACHABLE:
            pass
        time.sleep(0.05)
    return None


@dataclass
class Snapshot:
    """What both databases hold, read once: orders {order_id: (user_id, amount, status, description)}, inbox
    {order_id: (user_id, amount, status, acked)}, balances {user_id: balance}, the ledger's movements, and
    {what: count} of work still in flight."""
    orders: dict
    inbox: dict
    balances: dict
    movements: list
    pending: dict


# A top-up's key as its client knows it: its Idempotency-Key, else the X-Request-ID it sent (which the gateway
# passes on as X-Client-Request-ID, naming the request with an id of its own).
MOVEMENTS = ("SELECT id, user_id, kind, amount, balance, order_id, COALESCE(client_request_id, request_key) "
             "FROM account_movements ORDER BY user_id, id")


def read_snapshot(order_db, payment_db):
    orders = {oid: (uid, amount, status, description) for oid, uid, amount, status, description in
              query(order_db, "SELECT order_id, user_id, amount, status, description FROM orders")}
    inbox = {oid: (uid, amount, status, acked) for oid, uid, amount, status, acked in
             query(payment_db, "SELECT order_id, user_id, amount, status, acked FROM inbox")}
    balances = dict(query(payment_db, "SELECT user_id, balance FROM accounts"))
    movements = [Movement(*row) for row in query(payment_db, MOVEMENTS)]
    return Snapshot(orders, inbox, balances, movements, pending_work(order_db, payment_db))


def check_invariants(order_db, payment_db, top_ups, created_order_ids=None, unacknowledged_ok=None,
                     top_up_requests=(), users=None):
    """Check every invariant of both databases; see `check_snapshot` for the arguments."""
    return check_snapshot(read_snapshot(order_db, payment_db), top_ups, created_order_ids, unacknowledged_ok,
                          top_up_requests, users)


def money_of(db, users):
    """(inbox, balances, movements) of `users` only (all if None): the rest belong to earlier tests."""
    if users is None:
        return db.inbox, db.balances, db.movements
    users = set(users)
    return ({o: row for o, row in db.inbox.items() if row[0] in users},
            {u: b for u, b in db.balances.items() if u in users}, [m for m in db.movements if m.user_id in users])


def check_snapshot(db, top_ups, created_order_ids=None, unacknowledged_ok=None, top_up_requests=(), users=None):
    """Every invariant of a `Snapshot`, as a `Report` with one row per claim.

    `top_ups` is {user_id: total of top-ups known applied} (callers that know their totals); `top_up_requests`
    the `harness.ledger.TopUp`s a journal recorded, each with its key and what the client learned: the ledger
    decides the unanswered ones exactly. `created_order_ids` (orders acknowledged by a 201) must all exist.
    Another order may exist only if `unacknowledged_ok(order_id, description)` says a request the client never
    got an answer to could have created it; without that callable, no other order may exist. Given `users`,
    the money rows (conservation, ledger) cover only those users' accounts, whose top-ups the caller knows;
    the order rows always cover every order."""
    report = Report()
    orders, inbox = db.orders, db.inbox
    if created_order_ids is not None:
        created = set(created_order_ids)
        report.add("acknowledged orders all present",
                   [f"order {o} missing" for o in sorted(created - set(orders))], f"{len(created)} orders")
        allowed = unacknowledged_ok or (lambda *_: False)
        extra = sorted(set(orders) - created)
        report.add("unacknowledged orders only from unanswered requests",
                   [f"order {o} unexpected" for o in extra if not allowed(o, orders[o][3])],
                   f"{len(extra)} from requests without an answer")
    report.add("every order final", [f"order {o} is {s}" for o, (_, _, s, _) in orders.items() if s == "NEW"],
               f"{len(orders)} final")
    report.add("order status = inbox status",
               [f"order {o}: {s} vs inbox {inbox.get(o, (None,) * 3)[2]}" for o, (_, _, s, _) in orders.items()
                if s != "NEW" and inbox.get(o, (None,) * 3)[2] != s])
    report.add("inbox matches orders (user, amount), no unknown orders",
               [f"inbox order {o} not in orders" if o not in orders else f"inbox order {o} differs"
                for o, (uid, amount, _, _) in inbox.items() if orders.get(o, (None, None))[:2] != (uid, amount)])

    inbox, balances, movements = money_of(db, users)
    finished = defaultdict(Decimal)
    for uid, amount, status, _ in inbox.values():
        if status == "FINISHED":
            finished[uid] += amount
    applied = applied_top_ups(movements, top_up_requests)
    for user, total in top_ups.items():
        applied[user] += Decimal(total)
    report.add("top-ups credited exactly as clients learned (ledger, by request key)",
               # Credits of users whose totals the caller gave (`top_ups`) need no request of their own.
               top_up_problems([m for m in movements if m.user_id not in top_ups], top_up_requests),
               f"{len(top_up_requests)} keyed top-ups, {sum(t.answered is None for t in top_up_requests)} unanswered")
    accounts = set(applied) | set(balances) | set(finished)
    report.add("money conserved per user (top-ups applied = balance + FINISHED)",
               [f"user {u}: top-ups {applied[u]} != balance {balances.get(u, Decimal(0))} + FINISHED {finished[u]}"
                for u in sorted(accounts) if applied[u] != balances.get(u, Decimal(0)) + finished[u]],
               f"{len(balances)} accounts, exact")
    report.add("ledger: balance = credits - debits per account", balance_problems(movements, balances))
    report.add("ledger: debits are the FINISHED orders, once each, same amount",
               debit_problems(movements, inbox), f"{sum(m.kind == DEBIT for m in movements)} debits")
    report.add("ledger: each balance = previous +/- amount, the last = the account's",
               running_balance_problems(movements, balances), f"{len(movements)} movements")
    report.add("no debit without an account", [f"user {u}" for u in finished if u not in balances])
    report.add("outboxes empty, inbox acked", [f"{n} {what}" for what, n in db.pending.items() if n])
    return report
