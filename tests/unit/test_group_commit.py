"""Group commit on a fake database: who shares a transaction, and how one failure is kept to its own request."""
import asyncio

import pytest

from common.db.group_commit import GroupCommit
from common.domain.errors import InvalidInput, Unavailable
from tests.unit.fakes import let_run


class Transactions:
    """A database whose `run(write, items)` records each batch; `hold` keeps the running one open, `began` is set
    once a transaction is under way."""

    def __init__(self, fail=lambda items: None):
        self.batches, self.fail = [], fail
        self.hold, self.began = asyncio.Event(), asyncio.Event()
        self.hold.set()

    async def run(self, write, items):
        self.batches.append(list(items))
        self.began.set()
        await self.hold.wait()
        self.fail(items)
        return await write(None, items)


async def doubled(cur, items):
    return [item * 2 if item >= 0 else InvalidInput(f"{item} refused") for item in items]


async def writing_one(max_batch):
    """(database, group commit, the first request's future) with that first request's transaction held open."""
    db = Transactions()
    commit = GroupCommit(db, doubled, max_batch=max_batch)
    db.hold.clear()
    first = asyncio.ensure_future(commit(1))
    await db.began.wait()
    return db, commit, first


@pytest.mark.gen_test
async def test_a_lone_request_is_written_at_once_and_alone():
    db = Transactions()
    assert await GroupCommit(db, doubled, max_batch=10)(4) == 8
    assert db.batches == [[4]]


@pytest.mark.gen_test
async def test_requests_that_come_during_a_transaction_share_the_next_one_up_to_the_batch_limit():
    db, commit, first = await writing_one(max_batch=3)
    later = [asyncio.ensure_future(commit(n)) for n in range(2, 7)]
    await let_run()  # each request joins the queue; none may start a transaction beside the open one
    assert db.batches == [[1]] and not any(f.done() for f in [first, *later])
    db.hold.set()
    assert await asyncio.gather(first, *later) == [2, 4, 6, 8, 10, 12]
    assert db.batches == [[1], [2, 3, 4], [5, 6]]


@pytest.mark.gen_test
async def test_a_refusal_is_its_own_requests_answer_only():
    commit = GroupCommit(Transactions(), doubled, max_batch=10)
    answers = await asyncio.gather(commit(1), commit(-1), commit(2), return_exceptions=True)
    assert answers[0] == 2 and answers[2] == 4
    assert isinstance(answers[1], InvalidInput) and answers[1].message == "-1 refused"


@pytest.mark.gen_test
async def test_a_batch_that_fails_is_written_again_one_request_at_a_time():
    def fail_with_seven(items):
        if 7 in items:
            raise ValueError("seven")
    db = Transactions(fail_with_seven)
    commit = GroupCommit(db, doubled, max_batch=10)
    answers = await asyncio.gather(commit(1), commit(7), commit(2), return_exceptions=True)
    assert answers[0] == 2 and answers[2] == 4 and isinstance(answers[1], ValueError)
    assert db.batches == [[1, 7, 2], [1], [7], [2]]


@pytest.mark.gen_test
async def test_the_database_away_is_every_requests_answer():
    def away(items):
        raise Unavailable("Database temporarily unavailable.")
    db = Transactions(away)
    commit = GroupCommit(db, doubled, max_batch=10)
    answers = await asyncio.gather(commit(1), commit(2), return_exceptions=True)
    assert all(isinstance(answer, Unavailable) for answer in answers)
    assert db.batches == [[1, 2]]  # not tried one by one: each would get the same answer


@pytest.mark.gen_test
async def test_a_cancelled_request_leaves_the_others_answered_and_the_writer_ready():
    db, commit, first = await writing_one(max_batch=10)
    cancelled, kept = asyncio.ensure_future(commit(2)), asyncio.ensure_future(commit(3))
    await asyncio.sleep(0)
    cancelled.cancel()
    db.hold.set()
    assert await first == 2 and await kept == 6
    assert db.batches == [[1], [2, 3]]  # its row is written all the same, as a lost answer would leave it
    assert await commit(5) == 10


@pytest.mark.gen_test
async def test_the_writer_hands_each_batch_s_outcomes_over_before_any_request_is_answered():
    handed, answered_first = [], []

    def committed(items, outcomes):
        handed.append((list(items), list(outcomes)))
        answered_first.append(any(f.done() for f in requests))
    commit = GroupCommit(Transactions(), doubled, max_batch=10, committed=committed)
    requests = [asyncio.ensure_future(commit(n)) for n in (3, -1)]
    results = await asyncio.gather(*requests, return_exceptions=True)
    assert results[0] == 6 and isinstance(results[1], InvalidInput)
    assert [(items, outcomes[0]) for items, outcomes in handed] == [([3, -1], 6)]
    assert answered_first == [False]


@pytest.mark.gen_test
async def test_a_failing_hand_over_is_logged_and_the_requests_are_answered_all_the_same(caplog):
    def committed(items, outcomes):
        raise RuntimeError("broken")
    commit = GroupCommit(Transactions(), doubled, max_batch=10, committed=committed)
    assert await commit(2) == 4
    assert "handing over a committed batch failed" in caplog.text
