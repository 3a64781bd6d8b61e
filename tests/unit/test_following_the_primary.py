"""How `Database.run` follows a failover: while no primary is known, calls look for it before they try the pool's
host, which, cut off, would cost each of them its timeouts first (the real pair: tests/cluster/test_host_choice.py;
the cut: tests/partition)."""
import asyncio
from contextlib import asynccontextmanager

import psycopg2
import pytest

from common.db.database import Database
from common.db.pg_hosts import NoPrimary
from common.domain.errors import Unavailable

CUT_HOST_TIMEOUT = 0.3  # what a call on the cut host's pool costs before it fails (a connect or statement timeout)


class CutPool:
    """A pool on a host that does not answer: each acquisition fails after `CUT_HOST_TIMEOUT`."""

    def __init__(self):
        self.tries = 0

    @asynccontextmanager
    async def acquire(self):
        self.tries += 1
        await asyncio.sleep(CUT_HOST_TIMEOUT)
        raise psycopg2.OperationalError("timeout expired")
        yield


class NoHostWrites:
    """The hosts during a failover: none accepts writes yet."""
    several = True

    def __init__(self):
        self.looks = 0

    async def primary(self):
        self.looks += 1
        raise NoPrimary("no primary among the database hosts: a unreachable; b is a standby", [])


async def failing_calls(db, calls):
    async def work(cur):
        raise AssertionError("never reached: no host answers")
    for _ in range(calls):
        with pytest.raises(Unavailable):
            await db.run(work, retry_seconds=0.1)


@pytest.mark.gen_test(timeout=10)
async def test_once_a_look_found_no_primary_later_calls_look_again_before_trying_the_cut_host():
    pool, hosts = CutPool(), NoHostWrites()
    db = Database(pool, hosts=hosts, dsn="host=a dbname=x")
    await failing_calls(db, 5)
    assert pool.tries == 1  # the first call's first attempt only
    assert hosts.looks >= 5


@pytest.mark.gen_test(timeout=10)
async def test_a_single_host_database_always_tries_its_pool():
    pool = CutPool()
    db = Database(pool, dsn="host=a dbname=x")
    await failing_calls(db, 3)
    assert pool.tries >= 3
