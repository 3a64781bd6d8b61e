"""PostgreSQL's settling statement (`PostgresPayments.settle`) against the cases the in-memory repository passes
(tests/unit/test_settle.py), so the fake the unit tests trust settles exactly as the product does; and what only
a real database shows: a user busy in another transaction, confirmed results deleted on the way, and the round
trips a settling takes."""
import secrets
from decimal import Decimal

import aiopg
import pytest

from common.db.database import Database
from harness.infra import INFRA
from payment_svc.repo import PostgresPayments
from tests.unit.test_settle import CASES, expected, requests_of, users_of


@pytest.fixture(scope="module")
def dsn():
    name = f"shop_settle_{secrets.token_hex(4)}"
    yield INFRA.dsn(name)
    INFRA.drop_database(name)


@pytest.fixture
def db(io_loop, dsn):
    database = io_loop.run_sync(lambda: Database.connect(dsn, "payment_svc", 2), timeout=30)
    yield database
    io_loop.run_sync(database.close, timeout=30)


def ids():
    """Offsets that keep each test's users and orders apart from every other test's in the database."""
    return secrets.randbelow(2**40) * 100, secrets.randbelow(2**40) * 100


async def prepare(db, case, user, order):
    async def write(cur):
        if case.pick:  # the worker's step picks among every waiting user of the database: this case's only
            await cur.execute("UPDATE inbox SET acked = true WHERE NOT acked")
        for u, balance in case.accounts.items():
            await cur.execute("INSERT INTO accounts (user_id, balance) VALUES (%s, %s)", (u + user, balance))
        for o, u, amount, status, acked in case.inbox:
            await cur.execute("INSERT INTO inbox (order_id, user_id, amount, status, acked) VALUES (%s, %s, %s, %s, "
                              "%s)", (o + order, u + user, amount, status, acked))
    await db.run(write)


async def outcome(db, case, user, order, settled):
    async def read(cur):
        await cur.execute("SELECT order_id, status, acked FROM inbox WHERE order_id = ANY(%s)",
                          ([o + order for o in case.inbox_after],))
        inbox = {o - order: (status, acked) for o, status, acked in await cur.fetchall()}
        users = [u + user for u in case.balances]
        await cur.execute("SELECT user_id, balance FROM accounts WHERE user_id = ANY(%s)", (users,))
        balances = {u - user: b for u, b in await cur.fetchall()}
        await cur.execute("SELECT user_id, order_id, amount, balance FROM account_movements WHERE kind = 'debit' "
                          "AND order_id - %s BETWEEN 0 AND 99 ORDER BY id", (order,))
        ledger = [(u - user, o - order, a, b) for u, o, a, b in await cur.fetchall()]
        return inbox, balances, ledger
    inbox, balances, ledger = await db.run(read)
    return (inbox, balances, ledger, [(r["order_id"] - order, r["status"]) for r in settled.queued],
            settled.claimed)


async def holding_locks(dsn, user_ids):
    """A connection in a transaction holding the advisory locks of `user_ids`: those users are busy."""
    conn = await aiopg.connect(dsn)
    cur = await conn.cursor()
    await cur.execute("BEGIN")
    for user_id in user_ids:
        await cur.execute("SELECT pg_advisory_xact_lock(%s)", (user_id,))
    return conn


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("name", list(CASES))
async def test_the_statement_settles_by_the_rule_the_fake_follows(db, dsn, name):
    case = CASES[name]
    user, order = ids()
    await prepare(db, case, user, order)
    busy = await holding_locks(dsn, [u + user for u in case.busy])
    try:
        settled = await db.run(PostgresPayments().settle, requests_of(case, order, user), users_of(case, user),
                               case.pick, 5.0)
    finally:
        busy.close()
    assert await outcome(db, case, user, order, settled) == expected(case)
    stored = {o: (u, Decimal(a)) for o, u, a, *_ in case.requests} | {o: (u, Decimal(a)) for o, u, a, *_ in case.inbox}
    assert [(r["order_id"] - order, r["user_id"] - user, r["amount"]) for r in settled.queued] == \
        [(o, *stored[o]) for o, _ in case.queued]


@pytest.mark.gen_test(timeout=30)
async def test_results_whose_publish_was_confirmed_are_deleted_by_the_next_settling(db):
    user, order = ids()
    case = CASES["an order of a user without an account is cancelled"]
    first = await db.run(PostgresPayments().settle, requests_of(case, order, user), users_of(case, user), 0, 5.0)
    (row,) = first.queued
    second = await db.run(PostgresPayments().settle, [], [], 0, 0, [row["id"]])
    assert second.queued == []

    async def left(cur):
        await cur.execute("SELECT count(*) FROM outbox_ps WHERE id = %s", (row["id"],))
        return (await cur.fetchone())[0]
    assert await db.run(left) == 0


async def holding_rows(dsn, row_ids):
    """A connection in a transaction holding `outbox_ps` rows, as a relay step does while it sends them."""
    conn = await aiopg.connect(dsn)
    cur = await conn.cursor()
    await cur.execute("BEGIN")
    await cur.execute("SELECT id FROM outbox_ps WHERE id = ANY(%s) FOR UPDATE", (row_ids,))
    return conn


@pytest.mark.gen_test(timeout=30)
async def test_confirmed_results_held_by_a_relay_step_are_left_to_it_without_waiting(db, dsn):
    """Bookkeeping never waits for a row lock: a wait would last as long as the relay's send (up to the publish
    timeout against a silent broker node), past `DB_LOCK_TIMEOUT`, and fail the settling that carries it."""
    user, order = ids()
    case = CASES["a cancelled order does not stop a later one the balance still covers"]
    await prepare(db, case, user, order)
    settled = await db.run(PostgresPayments().settle, requests_of(case, order, user), users_of(case, user), 0, 5.0)
    held, free, other = (row["id"] for row in settled.queued)
    relay = await holding_rows(dsn, [held])
    try:
        for step in (lambda cur: PostgresPayments().settle(cur, [], [], 0, 0, [held, free]),
                     lambda cur: PostgresPayments().make_due(cur, [held, other]),
                     lambda cur: PostgresPayments().delete_outbox(cur, [held, other])):
            async def with_short_lock_timeout(cur, step=step):
                await cur.execute("SET LOCAL lock_timeout = 1000")  # a wait fails the test instead of hanging it
                return await step(cur)
            await db.run(with_short_lock_timeout, retry_seconds=0)
    finally:
        relay.close()

    async def left(cur):
        await cur.execute("SELECT id FROM outbox_ps WHERE id = ANY(%s)", ([held, free, other],))
        return {row_id for row_id, in await cur.fetchall()}
    assert await db.run(left) == {held}


class CountingCursor:
    """The transaction's cursor, counting the queries sent on it (each one round trip)."""

    def __init__(self, cur):
        self.cur, self.sent = cur, []

    async def execute(self, sql, params=None):
        self.sent.append(sql)
        await self.cur.execute(sql, params)

    def __getattr__(self, name):
        return getattr(self.cur, name)


@pytest.mark.gen_test(timeout=30)
async def test_a_settling_is_one_query_with_its_begin_and_then_the_commit(db):
    user, order = ids()
    case = CASES["a cancelled order does not stop a later one the balance still covers"]
    await prepare(db, case, user, order)
    counted = []

    async def settle(cur):
        counting = CountingCursor(cur)
        counted.append(counting)
        return await PostgresPayments().settle(counting, requests_of(case, order, user), users_of(case, user), 0, 5.0)
    settled = await db.run(settle)
    assert len(settled.queued) == 3
    # Claim and settle travel as one query, which carries the BEGIN (`BeginWithFirst`); COMMIT is the second and
    # last round trip. Both statements are prepared on the connection: the query executes them (the first time on
    # a connection it also prepares them).
    (sent,) = [counting.sent for counting in counted]
    assert len(sent) == 1
    statements = sent[0].split(";\n")
    assert [s.split("(")[0].rsplit("_", 1)[1] for s in statements if s.startswith("EXECUTE settle_")] == ["1", "2"]


@pytest.mark.gen_test(timeout=30)
async def test_the_settling_statements_are_prepared_once_per_connection(dsn):
    db = await Database.connect(dsn, "payment_svc", 1)  # one connection: both calls use it
    try:
        sent = []

        async def settle(cur):
            counting = CountingCursor(cur)
            await PostgresPayments().settle(counting, [], [], 0, 0)
            sent.extend(counting.sent)
        await db.run(settle)
        await db.run(settle)

        async def prepared(cur):
            await cur.execute("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'settle%%'")
            return (await cur.fetchone())[0]
        assert await db.run(prepared) == 2
    finally:
        await db.close()
    first, second = sent
    assert first.count("PREPARE settle_") == 2 and "WITH RECURSIVE" in first
    assert "PREPARE" not in second and second.count("EXECUTE settle_") == 2
