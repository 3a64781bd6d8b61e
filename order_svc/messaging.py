"""How a placed order's payment request leaves the Order Service: at once after its commit (`SendAtOnce`, the
fast path), or only through the outbox relay's poll (`SendByRelay`, FAST_PATH=0)."""
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from common.broker.messages import ORDER_REQUESTS, PaymentRequest
from common.broker.publisher import PublishWindow
from common.db.database import Database
from common.observability.tracing import Trace
from order_svc.repo import FOR_THE_RELAY, OrderRepository, OutboxSchedule


class RequestDispatch(Protocol):
    async def schedule(self) -> OutboxSchedule:
        """When the outbox row of the order about to be placed is due for the relay."""
    def placed(self, order: Mapping[str, Any], schedule: OutboxSchedule, trace: Trace) -> None:
        """`order` was committed with its outbox row due as `schedule` says."""
    def sent(self) -> list[int]:
        """Orders whose publish the broker confirmed, not yet counted in their outbox rows."""
    def counted(self, order_ids: list[int]) -> None:
        """`order_ids` (of `sent`) were counted by a statement that committed."""


class SendAtOnce:
    """The fast path: an order's payment request is published as soon as its transaction commits, without
    waiting for the outbox relay. Its outbox row is written due only `resend_delay` seconds later, so the relay
    sends it only if no payment result came back by then. Once the broker confirmed the publish, the row counts
    it (`sent_outbox`): the relay's send is then a resend, held back during a Payments outage like any other.
    The relay's step writes those counts, for every order confirmed since its last step, before it looks for
    due rows (a poll comes well within the resend delay); most rows are gone by then, their result applied.

    While the publish window is full, a new order waits for room before it is placed: under overload orders
    are then taken in only as fast as they are sent on, and a backlog cannot build up inside the service.
    With the broker away, or still no room after the publish timeout, the order is placed for the relay."""

    def __init__(self, db: Database, repo: OrderRepository, window: PublishWindow, is_connected: Callable[[], bool],
                 resend_delay: float, kick_relay: Callable[[], None]) -> None:
        self.db, self.repo, self.window, self.is_connected = db, repo, window, is_connected
        self.resend_delay, self.kick_relay = resend_delay, kick_relay
        self._sent: dict[int, None] = {}  # in the order they were confirmed

    async def schedule(self) -> OutboxSchedule:
        if self.is_connected() and await self.window.room(self.window.timeout):
            return OutboxSchedule(attempts=0, due_in=self.resend_delay)
        return FOR_THE_RELAY

    def placed(self, order: Mapping[str, Any], schedule: OutboxSchedule, trace: Trace) -> None:
        """After the commit: publish the order written due later (in the trace `trace`), or leave it to the relay."""
        if not schedule.due_in:
            self.kick_relay()
            return
        # Orders placed in the same event-loop tick (committed together) share messages: see `PublishWindow`.
        self.window.send(ORDER_REQUESTS, [(order["order_id"], PaymentRequest.entry_of(order), trace)],
                         self._count_sends)

    def sent(self) -> list[int]:
        return list(self._sent)

    def counted(self, order_ids: list[int]) -> None:
        for order_id in order_ids:
            self._sent.pop(order_id, None)

    async def _count_sends(self, confirmed: list[int], unconfirmed: list[int]) -> None:
        self._sent.update(dict.fromkeys(confirmed))
        if unconfirmed:
            # Not sent after all: make the row due for the relay now, not after the delay.
            await self.db.run(self.repo.unsent_outbox, unconfirmed)
            self.kick_relay()


class SendByRelay:
    """FAST_PATH=0, the seed's behaviour: the outbox relay sends every order at its next poll."""

    async def schedule(self) -> OutboxSchedule:
        return FOR_THE_RELAY

    def placed(self, order: Mapping[str, Any], schedule: OutboxSchedule, trace: Trace) -> None:
        pass

    def sent(self) -> list[int]:
        return []

    def counted(self, order_ids: list[int]) -> None:
        pass
