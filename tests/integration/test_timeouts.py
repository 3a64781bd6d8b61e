"""The server-side timeouts every session of a service carries, against the real PostgreSQL: a transaction whose
client went silent is ended by the server (its locks released), and a wait for a lock held that long ends with
PostgreSQL's own lock-timeout error, nothing written and nothing lost."""
import random
import time
from decimal import Decimal

import aiopg
import psycopg2
import psycopg2.errors
import pytest

from common.db.database import Database
from common.db.pg_hosts import with_timeouts
from common.domain.errors import Unavailable
from common.runtime.config import DbTimeouts


async def connect(run_env, timeouts):
    return await Database.connect(run_env["PAYMENT_DB_DSN"], "payment_svc", 2, timeouts)


async def silent_holder(run_env, user_id, timeouts):
    """A connection (with `timeouts`' session settings) left idle in a transaction that locked the account of
    `user_id` FOR UPDATE: a service cut off from the database after taking the lock."""
    conn = await aiopg.connect(with_timeouts(run_env["PAYMENT_DB_DSN"], timeouts), enable_hstore=False)
    cur = await conn.cursor()
    await cur.execute("BEGIN; SELECT balance FROM accounts WHERE user_id = %s FOR UPDATE", (user_id,))
    return conn, cur


async def open_account(db, balance):
    user_id = random.randint(10**9, 2 * 10**9)

    async def insert(cur):
        await cur.execute("INSERT INTO accounts (user_id, balance) VALUES (%s, %s)", (user_id, balance))
    await db.run(insert)
    return user_id


async def credit(db, user_id, amount, **run):
    async def update(cur):
        await cur.execute("UPDATE accounts SET balance = balance + %s WHERE user_id = %s", (amount, user_id))
    await db.run(update, **run)


async def balance(db, user_id):
    async def select(cur):
        await cur.execute("SELECT balance FROM accounts WHERE user_id = %s", (user_id,))
        return (await cur.fetchone())[0]
    return await db.run(select, transaction=False)


@pytest.mark.gen_test(timeout=60)
async def test_every_session_carries_the_server_timeouts(run_env):
    db = await connect(run_env, DbTimeouts(idle_in_transaction=1.5, lock=0.25))
    try:
        async def settings(cur):
            await cur.execute("SELECT current_setting('idle_in_transaction_session_timeout'), "
                              "current_setting('lock_timeout')")
            return await cur.fetchone()
        assert await db.run(settings, transaction=False) == ("1500ms", "250ms")
        assert await db.background.run(settings, transaction=False) == ("1500ms", "250ms")
    finally:
        await db.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_transaction_left_idle_is_ended_by_the_server_and_its_lock_released(run_env):
    timeouts = DbTimeouts(idle_in_transaction=1.0, lock=3.0)
    db = await connect(run_env, timeouts)
    conn = None
    try:
        user_id = await open_account(db, Decimal("10.00"))
        conn, cur = await silent_holder(run_env, user_id, timeouts)
        started = time.monotonic()
        await credit(db, user_id, Decimal("1.00"))  # waits for the lock until the server ends the holder
        waited = time.monotonic() - started
        assert 0.5 < waited < 3.0, waited
        assert await balance(db, user_id) == Decimal("11.00")
        with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):
            await cur.execute("UPDATE accounts SET balance = 0 WHERE user_id = %s", (user_id,))
        assert await balance(db, user_id) == Decimal("11.00"), "the ended transaction wrote nothing"
    finally:
        if conn is not None:
            conn.close()
        await db.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_lock_wait_past_lock_timeout_fails_clearly_and_loses_nothing(run_env):
    db = await connect(run_env, DbTimeouts(lock=0.3))
    conn = None
    try:
        user_id = await open_account(db, Decimal("10.00"))
        conn, cur = await silent_holder(run_env, user_id, DbTimeouts(idle_in_transaction=30))
        started = time.monotonic()
        with pytest.raises(Unavailable) as failed:
            await credit(db, user_id, Decimal("1.00"), retry_seconds=1.0)
        assert time.monotonic() - started < 4.0
        cause = failed.value.__cause__
        assert isinstance(cause, psycopg2.errors.LockNotAvailable), repr(cause)
        assert "lock timeout" in str(cause)
        # The holder was only slow: its write commits, and the refused credit left no trace.
        await cur.execute("UPDATE accounts SET balance = balance + 5 WHERE user_id = %s; COMMIT", (user_id,))
        assert await balance(db, user_id) == Decimal("15.00")
        await credit(db, user_id, Decimal("1.00"))  # the caller's retry, once the lock is free
        assert await balance(db, user_id) == Decimal("16.00")
    finally:
        if conn is not None:
            conn.close()
        await db.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_statement_past_the_statement_timeout_ends_in_seconds_not_aiopg_s_minute(run_env):
    db = await connect(run_env, DbTimeouts(statement=1.0, lock=0.5))
    try:
        async def sleep(cur):
            await cur.execute("SELECT pg_sleep(30)")
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await db.run(sleep, retry_seconds=0, transaction=False)
        assert time.monotonic() - started < 3.0
        assert await balance(db, await open_account(db, Decimal("1.00"))) == Decimal("1.00"), "the pool recovers"
    finally:
        await db.close()
