"""Which host `common.db.pg_hosts` picks, and how `common.db.database.Database` follows the primary, on the real
pair."""
import asyncio
import secrets

import psycopg2
import psycopg2.errors
import pytest

from common.db.database import Database, create_pool, ensure_database
from common.db.pg_hosts import Hosts, NoPrimary, WrongHost, describe, find_primary, refuse_standby
from harness.stack import free_port
from tests.cluster.conftest import node_dsn
from tests.conftest import wait_for


@pytest.fixture
def roles(pg_ha):
    pg_ha.wait_settled()
    primary = pg_ha.primary()
    standby = next(n for n in pg_ha.nodes() if n != primary)
    return primary, standby


@pytest.fixture
def table_db(roles, pg_ha):
    """A database with one table, created on the primary and replicated to the standby."""
    primary, standby = roles
    name = f"shop_hosts_{secrets.token_hex(4)}"
    asyncio.run(ensure_database(node_dsn(primary, name)))
    conn = psycopg2.connect(node_dsn(primary, name))
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (x int)")
    conn.close()
    wait_for(lambda: replayed(node_dsn(standby, name)))  # synchronous_commit = on waits for flush, not replay
    yield name
    conn = psycopg2.connect(node_dsn(pg_ha.primary()))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def replayed(dsn):
    try:
        conn = psycopg2.connect(dsn)
    except psycopg2.OperationalError as exc:
        raise AssertionError(exc) from exc
    with conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('t')")
        assert cur.fetchone()[0]
    conn.close()


def down_dsn():
    return f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"


def test_the_primary_is_chosen_whichever_position_it_has(roles):
    primary, standby = roles
    assert asyncio.run(find_primary([node_dsn(standby), node_dsn(primary)])) == node_dsn(primary)
    assert asyncio.run(find_primary([down_dsn(), node_dsn(standby), node_dsn(primary)])) == node_dsn(primary)
    assert asyncio.run(find_primary([node_dsn(primary), node_dsn(standby)])) == node_dsn(primary)


def test_without_a_primary_the_error_says_what_each_host_answered(roles):
    _, standby = roles
    with pytest.raises(NoPrimary) as error:
        asyncio.run(find_primary([down_dsn(), node_dsn(standby)]))
    assert "unreachable" in str(error.value) and f"127.0.0.1:{standby.port} is a standby" in str(error.value)


def test_a_new_connection_on_a_standby_is_refused(roles):
    _, standby = roles
    with pytest.raises(WrongHost):
        asyncio.run(create_pool(node_dsn(standby), 1, refuse_standby))


async def insert_on(db):
    async def insert(cur):
        await cur.execute("INSERT INTO t VALUES (1)")
    try:
        await db.run(insert)
        return db.dsn
    finally:
        await db.close()


def test_a_write_that_reaches_a_standby_runs_again_on_the_primary(roles, table_db):
    """A pool left on a node that came back as the standby (as after a failover): the write gets
    `ReadOnlySqlTransaction`, the database looks for the primary, moves its pool there and runs it again."""
    primary, standby = roles
    hosts = Hosts(f"postgresql://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/{table_db}")

    async def on_standby():
        return await insert_on(Database(await create_pool(node_dsn(standby, table_db), 2), hosts=hosts,
                                        dsn=node_dsn(standby, table_db)))
    moved_to = asyncio.run(on_standby())
    assert describe(moved_to) == f"127.0.0.1:{primary.port}"
    conn = psycopg2.connect(node_dsn(primary, table_db))
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM t")
        assert cur.fetchone()[0] == 1
    conn.close()


def test_a_single_host_database_reports_a_standby_write_as_it_always_did(roles, table_db):
    _, standby = roles

    async def on_standby():
        return await insert_on(Database(await create_pool(node_dsn(standby, table_db), 2)))
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        asyncio.run(on_standby())
