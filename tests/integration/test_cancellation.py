"""A cancelled `Database.run` always ends in `CancelledError`, wherever the cancellation lands.

aiopg can lose a cancellation (Python 3.11's `asyncio.wait_for` returns a result that arrives together with it;
a ROLLBACK on the connection aiopg closed raises in its place). A consumer that carried on after being cancelled
kept the Order Service from stopping on SIGTERM about one time in eight."""
import asyncio
import random

import pytest

from common.db.database import Database


@pytest.mark.gen_test(timeout=60)
async def test_a_cancelled_transaction_never_returns_normally(run_env):
    db = await Database.connect(run_env["ORDER_DB_DSN"], "order_svc", 4)

    async def two_statements(cur):
        await cur.execute("SELECT 1")
        await cur.execute("SELECT 2")
        return "done"

    outcomes = []
    try:
        for _ in range(300):
            task = asyncio.create_task(db.run(two_statements))
            await asyncio.sleep(random.uniform(0, 0.003))  # lands anywhere from BEGIN to COMMIT, or after
            cancel_requested = task.cancel()
            try:
                await task
                outcomes.append("returned after the cancel" if cancel_requested else "finished first")
            except asyncio.CancelledError:
                outcomes.append("cancelled")
    finally:
        await db.close()
    assert "returned after the cancel" not in outcomes, outcomes.count("returned after the cancel")
    assert "cancelled" in outcomes
