"""The contract's invariants, checked by reading both services' databases directly.

One helper for every test of correctness: the e2e tests, the chaos runner and the benchmark."""
import time
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import Decimal

import psycopg2


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
        self.checks.append(Check(name, not problems, "; ".join(map(str, problems[:5])) or detail_ok))

    def table(self):
        width = max(len(c.name) for c in self.checks)
        lines = [f"{'check'.ljust(width)}  result  detail", "-" * (width + 40)]
        lines += [f"{c.name.ljust(width)}  {'PASS' if c.ok else 'FAIL'}    {c.detail}" for c in self.checks]
        return "\n".join(lines)


def query(dsn, sql, params=None):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def pending_count(order_dsn):
    """Orders not yet final."""
    return query(order_dsn, "SELECT count(*) FROM orders WHERE status = 'NEW'")[0][0]


def wait_until_settled(order_dsn, timeout):
    """Wait (bounded) until no order is pending; return the seconds it took, or None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pending_count(order_dsn) == 0:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def check_invariants(order_dsn, payment_dsn, top_ups, created_order_ids=None):
    """Check every invariant; `top_ups` is {user_id: total of acknowledged top-ups}.

    `created_order_ids` (orders acknowledged by a 201) must all exist, and no other order may exist."""
    report = Report()
    orders = {oid: (uid, amount, status) for oid, uid, amount, status in
              query(order_dsn, "SELECT order_id, user_id, amount, status FROM orders")}
    inbox = {oid: (uid, amount, status, acked) for oid, uid, amount, status, acked in
             query(payment_dsn, "SELECT order_id, user_id, amount, status, acked FROM inbox")}
    balances = dict(query(payment_dsn, "SELECT user_id, balance FROM accounts"))

    if created_order_ids is not None:
        created = set(created_order_ids)
        report.add("acknowledged orders all present",
                   [f"order {o} missing" for o in sorted(created - set(orders))], f"{len(created)} orders")
        report.add("no unacknowledged orders present",
                   [f"order {o} unexpected" for o in sorted(set(orders) - created)])
    report.add("every order final", [f"order {o} is {s}" for o, (_, _, s) in orders.items() if s == "NEW"],
               f"{len(orders)} final")
    report.add("order status = inbox status",
               [f"order {o}: {s} vs inbox {inbox.get(o, (None,) * 3)[2]}" for o, (_, _, s) in orders.items()
                if s != "NEW" and inbox.get(o, (None,) * 3)[2] != s])
    report.add("inbox has no unknown orders", [f"inbox order {o} not in orders" for o in inbox if o not in orders])
    report.add("no negative balance", [f"user {u}: {b}" for u, b in balances.items() if b < 0])

    finished = defaultdict(Decimal)
    for uid, amount, status, _ in inbox.values():
        if status == "FINISHED":
            finished[uid] += amount
    report.add("money conserved per user (top-ups = balance + FINISHED)",
               [f"user {u}: top-ups {top_ups.get(u, 0)} != balance {balances.get(u, 0)} + debits {finished[u]}"
                for u in set(top_ups) | set(balances) | set(finished)
                if Decimal(top_ups.get(u, 0)) != balances.get(u, Decimal(0)) + finished[u]],
               f"{len(balances)} accounts")
    report.add("no debit without an account", [f"user {u}" for u in finished if u not in balances])
    outbox_os = query(order_dsn, "SELECT count(*) FROM outbox_os")[0][0]
    outbox_ps = query(payment_dsn, "SELECT count(*) FROM outbox_ps")[0][0]
    unacked = sum(1 for *_, acked in inbox.values() if not acked)
    report.add("outboxes empty, inbox acked",
               [f"{n} rows in {t}" for n, t in ((outbox_os, "outbox_os"), (outbox_ps, "outbox_ps"),
                                                 (unacked, "inbox unacked")) if n])
    return report
