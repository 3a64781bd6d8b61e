"""The invariant checker reading real databases: the schema's tables filled by hand with what a run leaves
(accounts, inbox, orders, the ledger), then broken one way at a time."""
import secrets
from decimal import Decimal

import psycopg2
import pytest

from common.db.database import schema_section
from harness.infra import INFRA
from harness.invariants import check_invariants
from harness.ledger import TopUp

RUN = """
INSERT INTO orders (order_id, user_id, amount, status, description) VALUES
    (1, 1, 30.00, 'FINISHED', 'a'), (2, 1, 500.00, 'CANCELLED', 'b'), (3, 9, 5.00, 'CANCELLED', 'c');
"""
PAYMENTS = """
INSERT INTO accounts (user_id, balance) VALUES (1, 95.25);
INSERT INTO inbox (order_id, user_id, amount, status, acked) VALUES
    (1, 1, 30.00, 'FINISHED', true), (2, 1, 500.00, 'CANCELLED', true), (3, 9, 5.00, 'CANCELLED', true);
INSERT INTO account_movements (user_id, kind, amount, balance, order_id, request_key) VALUES
    (1, 'credit', 100.00, 100.00, NULL, 'first'),
    (1, 'debit', 30.00, 70.00, 1, NULL),
    (1, 'credit', 25.25, 95.25, NULL, 'unanswered-applied');
"""
TOP_UPS = [TopUp("first", 1, Decimal("100"), True), TopUp("unanswered-applied", 1, Decimal("25.25"), None),
           TopUp("unanswered-lost", 1, Decimal("40"), None), TopUp("refused", 1, Decimal("7"), False)]


def execute(dsn, sql):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture
def databases():
    names = [f"shop_inv_{secrets.token_hex(4)}_{what}" for what in ("orders", "payments")]
    for name in names:
        execute(INFRA.pg_admin_dsn, f'CREATE DATABASE "{name}"')
    order_dsn, payment_dsn = map(INFRA.dsn, names)
    execute(order_dsn, schema_section("order_svc") + RUN)
    execute(payment_dsn, schema_section("payment_svc") + PAYMENTS)
    yield order_dsn, payment_dsn
    for name in names:
        INFRA.drop_database(name)


def failing(report):
    return {c.name for c in report.checks if not c.ok}


def test_the_checker_reads_a_consistent_run_as_passing(databases):
    report = check_invariants(*databases, {}, [1, 2, 3], top_up_requests=TOP_UPS)
    assert report.ok, report.table()


@pytest.mark.parametrize("sql, rows", [
    ("UPDATE accounts SET balance = balance - 30", {"money conserved per user (top-ups applied = balance + FINISHED)",
                                                    "ledger: balance = credits - debits per account"}),
    ("UPDATE account_movements SET request_key = 'unanswered-lost' WHERE request_key = 'unanswered-applied'",
     {"top-ups credited exactly as clients learned (ledger, by request key)"}),
    ("UPDATE account_movements SET balance = 60 WHERE order_id = 1",
     {"ledger: each balance = previous +/- amount, the last = the account's"}),
    ("DELETE FROM account_movements WHERE order_id = 1",
     {"ledger: debits are the FINISHED orders, once each, same amount"}),
    ("UPDATE inbox SET status = 'CANCELLED' WHERE order_id = 1", {"order status = inbox status"}),
    ("INSERT INTO outbox_ps (order_id, status) VALUES (1, 'FINISHED')", {"outboxes empty, inbox acked"}),
])
def test_the_checker_reads_each_breakage_from_the_database(databases, sql, rows):
    execute(databases[1], sql)
    report = check_invariants(*databases, {}, [1, 2, 3], top_up_requests=TOP_UPS)
    assert rows <= failing(report), report.table()
