"""Requests held open until an order is final (blocking reads): who waits for which order, the caps on them, and
the wake-ups, from the LISTEN connection's notifications (`order_svc.listener`) or from reading the orders
again when notifications may have been missed (`service.read_waited_orders`).

A request reads its order, then joins; a wake-up that came in between would be missed. So `mark()` is taken
before the read, and `join` compares: the ids woken meanwhile are among the last `RECENT` remembered (a final
status is final for good), unless more than that many came, or notifications may have been missed meanwhile
(`missed`): then the waiter is `unsure`, and its order is read once more."""
import asyncio
from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

from common.broker.messages import OrderStatus
from common.observability.metrics import WAITING, WAITS_ENDED, WAITS_REFUSED, WAKE_UPS

RECENT = 10_000

FINAL, TIMEOUT, CLIENT_LEFT, SHUTDOWN = "final", "timeout", "client_left", "shutdown"


class Mark(NamedTuple):
    woken: int   # order ids woken so far
    missed: int  # times notifications may have been missed


class Waiter:
    """One held request: `future` resolves to the order's final status, or None when the wait ends without one
    (`outcome` says why)."""
    __slots__ = ("order_id", "caller", "future", "outcome", "unsure")

    def __init__(self, order_id: int, caller: str, future: asyncio.Future[OrderStatus | None]) -> None:
        self.order_id, self.caller, self.future = order_id, caller, future
        self.outcome: str | None = None
        self.unsure = False

    def end(self, status: OrderStatus | None, outcome: str) -> bool:
        if self.future.done():
            return False
        self.outcome = outcome
        self.future.set_result(status)
        return True


class Waiters:
    """At most `max_waiting` waiters at once, `max_per_caller` of them for one caller."""

    def __init__(self, max_waiting: int, max_per_caller: int) -> None:
        self.max_waiting, self.max_per_caller = max_waiting, max_per_caller
        self.count = 0
        self.closed = False  # shutting down: nobody joins, everybody was let go
        self._by_order: dict[int, set[Waiter]] = {}
        self._callers: Counter[str] = Counter()
        self._recent: OrderedDict[int, OrderStatus] = OrderedDict()
        self._woken = self._missed = 0

    def mark(self) -> Mark:
        return Mark(self._woken, self._missed)

    def join(self, order_id: int, caller: str, since: Mark) -> Waiter | None:
        """A waiter for `order_id` (read after `since` was marked), or None beyond a cap or while shutting down:
        its request is then answered at once."""
        cap = "process" if self.closed or self.count >= self.max_waiting else \
            "user" if self._callers[caller] >= self.max_per_caller else None
        if cap:
            WAITS_REFUSED.labels(cap).inc()
            return None
        waiter = Waiter(order_id, caller, asyncio.get_running_loop().create_future())
        self._by_order.setdefault(order_id, set()).add(waiter)
        self._callers[caller] += 1
        self.count += 1
        WAITING.inc()
        if order_id in self._recent:
            waiter.end(self._recent[order_id], FINAL)
        elif since.missed != self._missed or self._woken - since.woken > RECENT:
            waiter.unsure = True
        return waiter

    async def wait(self, waiter: Waiter, seconds: float) -> OrderStatus | None:
        """The order's final status once it comes, or None after `seconds` (or when let go)."""
        timer = asyncio.get_running_loop().call_later(seconds, waiter.end, None, TIMEOUT)
        try:
            return await waiter.future
        finally:
            timer.cancel()

    def leave(self, waiter: Waiter) -> None:
        """The waiter's client went away: it stops waiting now."""
        waiter.end(None, CLIENT_LEFT)

    def remove(self, waiter: Waiter) -> None:
        """Forget `waiter` (after its wait, whatever ended it)."""
        waiting = self._by_order.get(waiter.order_id)
        if waiting is None or waiter not in waiting:
            return
        waiting.discard(waiter)
        if not waiting:
            del self._by_order[waiter.order_id]
        self._callers[waiter.caller] -= 1
        if not self._callers[waiter.caller]:
            del self._callers[waiter.caller]
        self.count -= 1
        WAITING.dec()
        waiter.end(None, TIMEOUT)  # removed before its wait ended (its order was read final): no outcome to wait for
        WAITS_ENDED.labels(waiter.outcome).inc()

    def wake(self, finals: Mapping[int, OrderStatus], by: str) -> None:
        """Wake the waiters of the orders in `finals` with their final status (`by`: what told)."""
        woken = 0
        for order_id, status in finals.items():
            self._recent[order_id] = status
            for waiter in self._by_order.get(order_id, ()):
                woken += waiter.end(status, FINAL)
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)
        self._woken += len(finals)
        if woken:
            WAKE_UPS.labels(by).inc(woken)

    def missed(self) -> None:
        """Notifications may have been missed (a LISTEN connection was down, or one named no orders): a waiter
        that joins from now on, having read its order before, reads it again."""
        self._missed += 1

    def held(self) -> list[int]:
        """The orders waited for."""
        return list(self._by_order)

    def let_go(self) -> None:
        """Shutting down: every waiter stops waiting now, and nobody joins any more."""
        self.closed = True
        for waiting in self._by_order.values():
            for waiter in waiting:
                waiter.end(None, SHUTDOWN)
