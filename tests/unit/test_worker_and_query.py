"""`BgWorker` (steps run when kicked, again while they report more, never overlapping) and how `execute`
binds a `Query`'s values."""
import asyncio

import pytest
import sqlalchemy as sa

from common.db.database import Query, execute
from common.runtime.worker import BgWorker
from tests.conftest import eventually
from tests.unit.fakes import cancelled_under_us, let_run


@pytest.mark.gen_test
async def test_a_worker_runs_its_step_again_while_it_reports_more_work():
    results = [True, True, False]
    calls = []

    async def step():
        calls.append(1)
        return results.pop(0) if results else False
    worker = BgWorker("w", step, interval=3600)
    worker.start()

    async def three_steps():
        assert len(calls) == 3
    await eventually(three_steps)
    await let_run()  # a fourth step, if it came without a kick, would run now: no timer comes before the poll
    assert len(calls) == 3  # it waits for a kick (or the hourly poll)
    worker.kick()
    await eventually(lambda: assert_count(calls, 4))
    await worker.stop()


@pytest.mark.gen_test
async def test_kicks_during_a_step_coalesce_into_one_more_run_and_steps_never_overlap():
    running, overlaps, calls = [], [], []
    release = asyncio.Event()

    async def step():
        overlaps.append(bool(running))
        running.append(1)
        calls.append(1)
        if len(calls) == 1:
            await release.wait()
        running.pop()
        return False
    worker = BgWorker("w", step, interval=3600)
    worker.start()
    await eventually(lambda: assert_count(calls, 1))
    for _ in range(5):
        worker.kick()
    release.set()
    await eventually(lambda: assert_count(calls, 2))
    await let_run()  # a third run, if the kicks had not coalesced, would start now
    assert len(calls) == 2 and not any(overlaps)
    await worker.stop()


async def a_bug():
    raise ValueError("a bug")


@pytest.mark.gen_test
@pytest.mark.parametrize("failure, logged", [(a_bug, "flaky: step failed"),
                                             # not `stop`: a library cancelled what the step awaited
                                             (cancelled_under_us, "flaky: step cancelled from within")])
async def test_a_failing_step_is_logged_and_the_worker_carries_on(caplog, failure, logged):
    calls = []

    async def step():
        calls.append(1)
        if len(calls) == 1:
            await failure()
        return False
    worker = BgWorker("flaky", step, interval=3600)
    worker.start()
    await eventually(lambda: assert_count(calls, 1))
    worker.kick()
    await eventually(lambda: assert_count(calls, 2))
    assert logged in caplog.text
    await worker.stop()


@pytest.mark.gen_test
async def test_the_poll_kicks_a_worker_nobody_kicks():
    calls = []

    async def step():
        calls.append(1)
        return False
    worker = BgWorker("w", step, interval=0.05)
    worker.start()
    await eventually(lambda: assert_count(calls, 3, at_least=True))
    await worker.stop()


def assert_count(calls, n, at_least=False):
    assert len(calls) >= n if at_least else len(calls) == n


TABLE = sa.table("t", sa.column("a"), sa.column("b"))
QUERY = Query(sa.select(TABLE.c.a).where(TABLE.c.a == sa.bindparam("x"), TABLE.c.b == sa.bindparam("y", 5)))


class RecordingCursor:
    def __init__(self):
        self.executed = []

    async def execute(self, sql, params=None):
        self.executed.append((sql, params))


@pytest.mark.gen_test
async def test_a_query_runs_with_its_values_bound_by_name_over_its_defaults():
    cur = RecordingCursor()
    await execute(cur, QUERY, x=1)
    await execute(cur, QUERY, x=1, y=2)
    assert cur.executed == [(QUERY.sql, {"x": 1, "y": 5}), (QUERY.sql, {"x": 1, "y": 2})]
    assert "%(x)s" in QUERY.sql and "%(y)s" in QUERY.sql


@pytest.mark.gen_test
async def test_a_query_refuses_a_value_it_has_no_parameter_for():
    cur = RecordingCursor()
    with pytest.raises(TypeError, match=r"unknown bind parameters \['z'\]"):
        await execute(cur, QUERY, x=1, z=2)
    assert cur.executed == []
