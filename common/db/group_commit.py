"""Group commit: requests that arrive while a transaction is being written share the next one.

At low load a request's transaction starts at once, alone. Under load, every request that arrived during one
transaction goes into the next, so a batch costs one BEGIN, one statement per step and one COMMIT (with its WAL
flush) however many requests it carries: the batch grows with the load, and no timer ever holds a request back.
Each request is still answered only after the commit of its own rows."""
import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from common.db.database import Database
from common.domain.errors import Unavailable

logger = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")
# `await write(cur, items)` writes a batch in the transaction of `cur`; returns, for each item in order, its
# result or the exception to raise for that item alone (a refusal that does not spoil the batch).
WriteBatch = Callable[[Any, list[Item]], Awaitable[Sequence[Result | BaseException]]]
# `committed(items, outcomes)`: called by the writer as soon as a batch's outcomes are known (its COMMIT done),
# before any of its requests is answered; each outcome is the item's result or its exception.
Committed = Callable[[list[Item], Sequence[Result | BaseException]], None]


class GroupCommit(Generic[Item, Result]):
    """`await commit(item)` writes `item` in a transaction shared with the items that came meanwhile (at most
    `max_batch` of them), one such transaction at a time.

    `committed`, if given, is handed each batch's outcomes right after its COMMIT, and the writer then lets the
    event loop run once before it answers the requests: what `committed` started (the publish of new orders)
    writes its frames ahead of the replies."""

    def __init__(self, db: Database, write: WriteBatch[Item, Result], max_batch: int,
                 committed: "Committed[Item, Result] | None" = None) -> None:
        self.db, self.write, self.max_batch, self.committed = db, write, max_batch, committed
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all(), name="group commit")
        return await future

    async def _write_all(self) -> None:
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:self.max_batch], self._waiting[self.max_batch:]
                items = [item for item, _ in batch]
                try:
                    outcomes = await self.db.run(self.write, items)
                except Exception as exc:  # noqa: BLE001 - handed to the requests, none of which may fail for another's
                    outcomes = await self._after_failure(items, exc)
                if self.committed is not None:
                    self._hand_over(items, outcomes)
                    await asyncio.sleep(0)
                for (_, future), outcome in zip(batch, outcomes):
                    if future.done():  # its request was cancelled: its rows are written all the same
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        except asyncio.CancelledError:
            for _, future in batch + self._waiting:  # only a stopping process cancels this task
                future.cancel()
            self._waiting = []
            raise
        finally:
            self._writer = None

    def _hand_over(self, items: list[Item], outcomes: Sequence[Result | BaseException]) -> None:
        assert self.committed is not None
        try:
            self.committed(items, outcomes)
        except Exception:  # the requests are answered all the same: their rows are committed
            logger.exception("handing over a committed batch failed")

    async def _after_failure(self, items: list[Item], exc: Exception) -> Sequence[Result | BaseException]:
        """Each item's outcome when the write of their batch raised `exc`."""
        if isinstance(exc, Unavailable) or len(items) == 1:
            # The database is away, or the COMMIT's outcome is unknown: each request alone would have got this.
            return [exc] * len(items)
        logger.warning("a batch of %d writes failed (%r): writing each alone", len(items), exc)
        outcomes: list[Result | BaseException] = []
        for item in items:
            try:
                outcomes.extend(await self.db.run(self.write, [item]))
            except Exception as alone:  # noqa: BLE001 - this item's own failure is its answer
                outcomes.append(alone)
        return outcomes
