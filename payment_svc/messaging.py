"""How settled payments leave the Payments Service: settled by the consumer and published at once after its
commit (`SettleAtOnce`, the fast path), or settled by the inbox worker and sent by the outbox relay at their
polls (`StoreOnly`, FAST_PATH=0)."""
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from common.broker.messages import PAYMENT_RESULTS, PaymentResult
from common.broker.publisher import Outgoing, PublishWindow
from common.db.database import Database
from payment_svc.repo import PaymentRepository


def outgoing_results(rows: Sequence[Mapping[str, Any]]) -> list[Outgoing]:
    """`outbox_ps` rows as the publisher takes them: (row id, the message's entry, trace)."""
    return [(row["id"], PaymentResult(row["order_id"], row["status"]).entry(), row["traceparent"]) for row in rows]


class ResultDispatch(Protocol):
    settles_on_receipt: bool  # the consumer settles its batch's users in the transaction that stores them
    due_in: float             # seconds until a result the consumer queued is due for the relay

    async def wait_for_room(self) -> None: ...
    def confirmed(self) -> list[int]:
        """The `outbox_ps` rows whose publish the broker confirmed, still to be deleted."""
    def deleted(self, ids: list[int]) -> None:
        """`ids` (of `confirmed`) were deleted by a statement that committed."""
    def send(self, rows: Sequence[Mapping[str, Any]]) -> None: ...
    def left_to_inbox_worker(self) -> None: ...
    def queued_for_relay(self) -> None: ...


class SettleAtOnce:
    """The fast path: the consumer publishes the results it settled as soon as its transaction commits, without
    waiting for the outbox relay. The rows are written due for the relay only `resend_delay` seconds later; a
    result not confirmed is made due at once. The rows the broker confirmed are deleted by the next statement
    that settles (the consumer's or the inbox worker's) or by the relay's next step, whichever comes first: a
    confirm costs no write of its own. While the publish window is full, the consumer waits before it takes the
    next batch."""
    settles_on_receipt = True

    def __init__(self, db: Database, repo: PaymentRepository, window: PublishWindow, resend_delay: float,
                 kick_relay: Callable[[], None], kick_inbox: Callable[[], None]) -> None:
        self.db, self.repo, self.window, self.due_in = db, repo, window, resend_delay
        self.kick_relay, self.kick_inbox = kick_relay, kick_inbox
        self._confirmed: dict[int, None] = {}  # ids in the order they were confirmed

    async def wait_for_room(self) -> None:
        await self.window.room()

    def confirmed(self) -> list[int]:
        return list(self._confirmed)

    def deleted(self, ids: list[int]) -> None:
        for row_id in ids:
            self._confirmed.pop(row_id, None)

    def send(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self.window.send(PAYMENT_RESULTS, outgoing_results(rows), self._delete_confirmed)

    def left_to_inbox_worker(self) -> None:
        """Some users were busy in another transaction: the inbox worker settles them now, not at its poll."""
        self.kick_inbox()

    def queued_for_relay(self) -> None:
        """The inbox worker queued results due at once: the relay sends them now, not at its poll."""
        self.kick_relay()

    async def _delete_confirmed(self, confirmed: list[int], unconfirmed: list[int]) -> None:
        self._confirmed.update(dict.fromkeys(confirmed))
        if unconfirmed:
            await self.db.run(self.repo.make_due, unconfirmed, transaction=False)
            self.kick_relay()


class StoreOnly:
    """FAST_PATH=0, the seed's behaviour: the consumer only stores requests; the inbox worker settles them and
    the outbox relay sends the results, each at its poll."""
    settles_on_receipt = False
    due_in = 0.0

    async def wait_for_room(self) -> None:
        pass

    def confirmed(self) -> list[int]:
        return []

    def deleted(self, ids: list[int]) -> None:
        pass

    def send(self, rows: Sequence[Mapping[str, Any]]) -> None:
        pass

    def left_to_inbox_worker(self) -> None:
        pass

    def queued_for_relay(self) -> None:
        pass
