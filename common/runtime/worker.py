"""`BgWorker`: a background loop that runs one step of work when kicked, and at least every poll interval."""
import asyncio
import logging
from collections.abc import Awaitable, Callable

from tornado.ioloop import PeriodicCallback

from common.runtime.stopping import being_cancelled, cancel

logger = logging.getLogger(__name__)

# Seconds the step under way when stopping may take to finish before it is cancelled.
STEP_GRACE = 5


class BgWorker:
    """Runs `await step()` repeatedly while it returns True (a full batch: more work waiting).

    `kick()` is the fast path (called after a commit that created work); a Tornado `PeriodicCallback`
    kicks it every `interval` seconds as the safety net. Kicks during a run coalesce into one more run,
    so steps never overlap within a process."""

    def __init__(self, name: str, step: Callable[[], Awaitable[bool]], interval: float) -> None:
        self.name = name
        self._step = step
        self._wake = asyncio.Event()
        self._poll = PeriodicCallback(self.kick, interval * 1000, jitter=0.1)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def kick(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)
        self._poll.start()
        self.kick()

    async def stop(self) -> None:
        """Stop polling and wait for the current step to finish."""
        self._poll.stop()
        self._stopping = True
        self._wake.set()
        if self._task:
            # A step normally ends within its own timeouts; one stuck on a dead peer must not hold the exit.
            await asyncio.wait([self._task], timeout=STEP_GRACE)
            await cancel(self._task, 2, f"{self.name}'s step")

    async def _loop(self) -> None:
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            try:
                while not self._stopping and await self._step():
                    pass
            except asyncio.CancelledError:
                if being_cancelled():
                    raise
                # Not `stop`: a library cancelled what the step awaited (see `being_cancelled`).
                logger.exception("%s: step cancelled from within; retrying at the next poll", self.name)
            except Exception:
                logger.exception("%s: step failed; retrying at the next poll", self.name)
