"""Cancellation: bounds on the steps of a shutdown, so that none can hold the process, and telling a task's own
cancellation from a `CancelledError` a library raises when what the task awaited went away (`being_cancelled`).

`asyncio.wait_for` is not such a bound: when its time is up it cancels the step and then waits, for as long as
it takes, until the step has ended. And one cancellation may not end a task: in Python 3.11, `asyncio.wait_for`
(under every aiopg query and connect) returns the result when a cancellation comes just as the awaited thing
ends, so a loop around queries can lose it and go on (seen: a service's stop hung in one test in a few hundred,
the LISTEN loop still running after its only cancellation)."""
import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Iterator

logger = logging.getLogger(__name__)

# Seconds between two cancellations of a task that has not ended yet.
RECANCEL_INTERVAL = 0.2


def being_cancelled() -> bool:
    """Whether the running task was asked to stop (`Task.cancel`): then a `CancelledError` is its own. One that is
    not is a library's way of saying that what the task awaited is gone (aiormq rejects the confirms a closing
    connection leaves pending with `CancelledError`), and must not end a loop as if the task were cancelled."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@contextlib.contextmanager
def cancelled_means_gone(what: str) -> Iterator[None]:
    """A `CancelledError` raised in the block that is not the running task's own (`being_cancelled`) becomes
    `ConnectionError`: `what` went away under the task, which goes on as after any broker failure."""
    try:
        yield
    except asyncio.CancelledError:
        if being_cancelled():
            raise
        raise ConnectionError(f"{what} was closed under the task") from None


async def within(seconds: float, what: str, step: Awaitable[object]) -> bool:
    """Await `step` for up to `seconds`. False if it did not end by then: it is cancelled and left behind, its
    stack logged. An exception the step raised in time is raised here."""
    task = asyncio.ensure_future(step)
    try:
        await asyncio.wait([task], timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.done():
        task.result()
        return True
    left_behind(task, f"{what} did not end within {seconds}s")
    task.cancel()
    return False


async def cancel(task: asyncio.Task[object] | None, seconds: float, what: str) -> bool:
    """Cancel `task`, again every `RECANCEL_INTERVAL` s until it has ended, for up to `seconds`. False (its stack
    logged) if it is still running then. Its result or exception, cancellation included, is not raised here."""
    if task is None:
        return True
    deadline = asyncio.get_running_loop().time() + seconds
    while not task.done():
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            left_behind(task, f"{what} still running {seconds}s after being cancelled")
            return False
        task.cancel()
        await asyncio.wait([task], timeout=min(RECANCEL_INTERVAL, left))
    if not task.cancelled():
        task.exception()  # retrieved: an error of a task that was stopping is no news
    return True


def left_behind(task: asyncio.Task[object], why: str) -> None:
    stack = io.StringIO()
    task.print_stack(file=stack)
    logger.warning("%s; going on without it. It was at:\n%s", why, stack.getvalue().rstrip())
