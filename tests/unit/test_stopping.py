"""Stopping cannot hang: a task that loses a cancellation (as a loop around aiopg queries does in Python 3.11, when
the cancellation comes just as a query ends) is cancelled again, and a stage that never ends is left behind."""
import asyncio
import logging

import psycopg2
import pytest

from common.runtime.stopping import cancel, within
from order_svc.listener import Listener


async def loses_one_cancellation(ended):
    """Goes on after its first cancellation, as if the query it awaited had ended at that moment."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        pass
    try:
        await asyncio.sleep(30)
    finally:
        ended.set()


async def never_ends():
    while True:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass


async def ended_within(seconds, step):
    task = asyncio.ensure_future(step)
    await asyncio.wait([task], timeout=seconds)
    done = task.done()
    task.cancel()
    return done


@pytest.mark.gen_test(timeout=10)
async def test_a_task_that_loses_a_cancellation_is_cancelled_again():
    ended = asyncio.Event()
    task = asyncio.ensure_future(loses_one_cancellation(ended))
    await asyncio.sleep(0)
    assert await ended_within(2, cancel(task, 5, "the stubborn task"))
    assert ended.is_set() and task.cancelled()


@pytest.mark.gen_test(timeout=10)
async def test_a_task_that_never_ends_is_left_behind_with_its_stack(caplog):
    task = asyncio.ensure_future(never_ends())
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, "common.runtime.stopping"):
        assert await cancel(task, 0.5, "the endless task") is False
    assert "the endless task still running 0.5s after being cancelled" in caplog.text
    assert "never_ends" in caplog.text  # where it was stuck
    assert not task.done()
    task.get_coro().close()


@pytest.mark.gen_test(timeout=10)
async def test_a_stage_that_never_ends_holds_the_stop_only_for_its_bound(caplog):
    with caplog.at_level(logging.WARNING, "common.runtime.stopping"):
        assert await ended_within(2, within(0.5, "closing the endless thing", never_ends()))
    assert "closing the endless thing did not end within 0.5s" in caplog.text


@pytest.mark.gen_test(timeout=10)
async def test_a_stage_that_fails_in_time_raises():
    async def fails():
        raise ValueError("broken")
    with pytest.raises(ValueError, match="broken"):
        await within(1, "a failing stage", fails())


class LosingListener(Listener):
    """A LISTEN loop whose connection attempt loses the first cancellation, as `aiopg.connect` can."""

    def __init__(self):
        super().__init__(hosts=None, channel="orders_final", on_notify=None, on_listening=None)
        self.attempts = 0

    async def _listen(self):
        self.attempts += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass
        raise psycopg2.OperationalError("the connection the lost cancellation closed")


@pytest.mark.gen_test(timeout=10)
async def test_the_listener_stops_though_its_loop_lost_a_cancellation():
    listener = LosingListener()
    listener.start()
    await asyncio.sleep(0.05)
    assert await ended_within(3, listener.stop())
    assert listener.attempts >= 1
