"""Fakes of the ports the services are built from, for the unit layer: the database (`FakeDatabase`), the broker
(`FakeBroker`, `FakePublisher`, `FakeMessage`, `FakeDeadLetters`, `FakeConsuming`) and each service's repository
(`InMemoryOrders`, `InMemoryPayments`), injected where the product passes the real ones (`bootstrap`), enough to
drive batching and acking, the publish window, both fast paths, both relays and the use cases without a server.
The integration tests use the real ones."""
import asyncio
import json
from dataclasses import dataclass, field
from decimal import Decimal

from common.broker.consumer import Received
from common.broker.messages import OrderStatus
from common.broker.packing import Entry
from common.broker.publisher import PublishWindow
from common.db.idempotency import Outcome
from common.domain.errors import IdempotencyKeyReused, InvalidMessage
from order_svc.repo import Finalized
from payment_svc.repo import Settled

# The broker user the fake messages come from, and the one queue consumers take them from.
PUBLISHER = "publisher"
PUBLISHERS = (PUBLISHER,)


@dataclass(frozen=True)
class Debit:
    """One debit: `order_id` took `amount` from `user_id`, leaving `balance`."""
    user_id: int
    order_id: int
    amount: Decimal
    balance: Decimal


def decide(rows, balances):
    """The settling rule (`payment_svc.repo.SETTLE`'s walk), in Python: decide `rows` (pending inbox rows, a
    user's in `order_id` order) against `balances` ({user_id: balance}); returns ({order_id: status}, the
    debits in order). A `NEW` row is debited if the balance covers it (`FINISHED`), else `CANCELLED` (also with
    no account); a row already decided keeps its status."""
    statuses, debits, left = {}, [], dict(balances)
    for row in rows:
        status = row["status"]
        if status == OrderStatus.NEW:
            user_id, amount = row["user_id"], row["amount"]
            balance = left.get(user_id)
            if balance is not None and balance >= amount:
                left[user_id] = balance - amount
                debits.append(Debit(user_id, row["order_id"], amount, left[user_id]))
                status = OrderStatus.FINISHED
            else:
                status = OrderStatus.CANCELLED
        statuses[row["order_id"]] = status
    return statuses, debits


class FakeDeadLetters:
    """The publishing channel dead letters go out on: confirms every copy unless `refuse`, and keeps
    (queue, message id, reason) of each (the whole message in `messages`, its body in `bodies`)."""

    def __init__(self, refuse=False):
        self.copies, self.bodies, self.messages, self.refuse = [], [], [], refuse
        self.default_exchange = self

    async def publish(self, message, routing_key, mandatory, timeout):
        if self.refuse:
            raise TimeoutError("no confirm")
        self.copies.append((routing_key, message.message_id, message.headers["x-shop-reason"]))
        self.bodies.append(message.body)
        self.messages.append(message)



async def cancelled_under_us():
    """What a library does when the connection an await depends on closes: aiormq cancels the awaited future (a
    confirm, a frame's write) though nobody cancelled the awaiting task."""
    gone = asyncio.get_running_loop().create_future()
    gone.cancel()
    await gone

@dataclass
class FakeMessage:
    """An incoming message: records how it was acknowledged."""
    delivery_tag: int
    body: bytes = b"{}"
    redelivered: bool = False
    message_id: str = "m"
    headers: dict = field(default_factory=dict)
    content_type: str = "application/json"
    content_encoding: str = None
    correlation_id: str = None
    timestamp: object = None
    type: str = None
    app_id: str = None
    user_id: str = PUBLISHER
    outcome: list = field(default_factory=list)

    async def _record(self, what):
        self.outcome.append(what)

    def ack(self, multiple=False):
        return self._record(("ack", multiple))

    def nack(self, requeue=True):
        return self._record(("nack", requeue))

    def reject(self, requeue=False):
        return self._record(("reject", requeue))


class FakePublisher:
    """Confirms every row unless its id is in `refused`; `gate` (an Event) holds publishes back. Keeps each
    (queue, row id, entry) published, and the row ids of each `publish_all` call (`calls`)."""

    def __init__(self, refused=(), timeout=0.5, waiting=0):
        self.refused, self.timeout, self.waiting = set(refused), timeout, waiting
        self.published, self.calls = [], []
        self.gate = asyncio.Event()
        self.gate.set()

    async def publish_all(self, queue, rows):
        await self.gate.wait()
        self.published.extend((queue, row_id, entry) for row_id, entry, _trace in rows)
        self.calls.append([row_id for row_id, *_ in rows])
        return [row_id for row_id, *_ in rows if row_id not in self.refused]

    async def waiting_count(self, queue):
        return self.waiting


class FakeCursor:
    """The stand-in cursor of a `FakeDatabase` transaction: the in-memory repositories insist on getting one, so
    a use case that calls its repository outside `Database.run` fails here as it would on the real database."""


def in_transaction(cur):
    assert isinstance(cur, FakeCursor), "called without the transaction's cursor"


class FakeDatabase:
    """`run(work, *args)` calls `work(cursor, *args)` with a `FakeCursor` and records the call; it is its own
    `background` database."""

    def __init__(self):
        self.calls = []
        self.background = self

    async def run(self, work, *args, transaction=True, retry_seconds=None):
        self.calls.append((work.__name__, args))
        return await work(FakeCursor(), *args)

    async def ping(self):
        """Always answers."""


class FakeBroker:
    """What a service's `bootstrap` takes of a `Broker`: a publisher (a `FakePublisher`), its window, whether it
    is connected."""

    def __init__(self, publisher=None, connected=True):
        self.publisher = publisher or FakePublisher()
        self.window = PublishWindow(self.publisher)
        self.connected = connected

    def is_connected(self):
        return self.connected


class InMemoryKeys:
    """Idempotency keys in memory, as `common.db.idempotency` keeps them: {(principal, key): (fingerprint,
    result)}; a key used with another request is refused."""

    def __init__(self):
        self.keys, self.forgotten = {}, []
        self.expired_batches = 0  # batches of expired keys there are to forget

    def earlier(self, request):
        """The `Outcome` or refusal of a key used before, or None for a key's first use."""
        if request is None or request.scoped_key not in self.keys:
            return None
        fingerprint, result = self.keys[request.scoped_key]
        if fingerprint != request.fingerprint:
            return IdempotencyKeyReused(f"'Idempotency-Key' {request.key!r} was already used with a different "
                                        "request.")
        return Outcome(result, replayed=True)

    def store(self, request, result):
        if request is not None:
            self.keys[request.scoped_key] = (request.fingerprint, result)

    async def forget_expired_keys(self, cur, hours, limit):
        in_transaction(cur)
        self.forgotten.append((hours, limit))
        self.expired_batches = max(self.expired_batches - 1, 0)
        return self.expired_batches > 0


class InMemoryOrders(InMemoryKeys):
    """`order_svc.repo.OrderRepository` in memory: `orders` {order_id: order}, `outbox` {order_id: row, with
    `due` (whether the relay takes it now) beside the table's columns}, and the calls that changed the outbox."""

    def __init__(self, outbox=None):
        """`outbox`: {order_id: attempts} of rows due, without their orders."""
        super().__init__()
        self.orders = {}
        self.outbox = {}
        for order_id, attempts in (outbox or {}).items():
            self.outbox[order_id] = {"order_id": order_id, "user_id": 1, "amount": Decimal(1), "attempts": attempts,
                                     "traceparent": None, "due": True}
        self.postponed, self.notified = [], []

    async def place_orders(self, cur, requests):
        in_transaction(cur)
        outcomes = []
        for idempotent, placement in requests:
            outcome = self.earlier(idempotent)
            if outcome is None:
                outcome = Outcome(self._insert(placement), replayed=False)
                self.store(idempotent, outcome.result)
            outcomes.append(outcome)
        return outcomes

    def _insert(self, placement):
        order_id = max([*self.orders, *self.outbox, 0]) + 1
        self.orders[order_id] = {"order_id": order_id, "user_id": placement.user_id, "amount": placement.amount,
                                 "description": placement.description, "status": OrderStatus.NEW}
        self.outbox[order_id] = {"order_id": order_id, "user_id": placement.user_id, "amount": placement.amount,
                                 "attempts": placement.schedule.attempts, "traceparent": placement.trace,
                                 "due": not placement.schedule.due_in}
        return dict(self.orders[order_id])

    async def store_answer(self, cur, idempotent, order):
        in_transaction(cur)
        self.store(idempotent, order)

    async def get_order(self, cur, order_id):
        in_transaction(cur)
        return dict(self.orders[order_id]) if order_id in self.orders else None

    async def list_orders(self, cur, user_id, after, limit):
        in_transaction(cur)
        return [dict(order) for order_id, order in sorted(self.orders.items())
                if order_id > after and user_id in (None, order["user_id"])][:limit]

    async def lock_due_outbox(self, cur, limit):
        in_transaction(cur)
        return [{key: value for key, value in row.items() if key != "due"}
                for _, row in sorted(self.outbox.items()) if row["due"]][:limit]

    async def postpone_outbox(self, cur, order_ids, first_delay, max_delay):
        in_transaction(cur)
        self.postponed.append((sorted(order_ids), first_delay, max_delay))
        for order_id in order_ids:
            self.outbox[order_id].update(attempts=self.outbox[order_id]["attempts"] + 1, due=False)

    async def sent_outbox(self, cur, order_ids):
        in_transaction(cur)
        for order_id in order_ids:
            if self.outbox[order_id]["attempts"] == 0:
                self.outbox[order_id]["attempts"] = 1

    async def unsent_outbox(self, cur, order_ids):
        in_transaction(cur)
        for order_id in order_ids:
            self.outbox[order_id].update(attempts=0, due=True)

    async def make_unsent_due(self, cur):
        in_transaction(cur)
        for row in self.outbox.values():
            if row["attempts"] == 0:
                row["due"] = True

    async def finalize_orders(self, cur, order_ids, statuses, notify=True):
        in_transaction(cur)
        finals = {}
        for order_id, status in zip(order_ids, statuses):
            order = self.orders.get(order_id)
            if order is not None and order["status"] == OrderStatus.NEW:
                order["status"] = finals[order_id] = OrderStatus(status)
            self.outbox.pop(order_id, None)
        if finals and notify:
            self.notified.append(finals)
        return Finalized({order_id for order_id in order_ids if order_id not in self.orders}, finals)

    async def final_statuses(self, cur, order_ids):
        in_transaction(cur)
        return {order_id: self.orders[order_id]["status"] for order_id in order_ids
                if order_id in self.orders and self.orders[order_id]["status"] != OrderStatus.NEW}

    async def backlog(self, cur):
        in_transaction(cur)
        return {"outbox_os": (len(self.outbox), 0.0)}


class InMemoryPayments(InMemoryKeys):
    """`payment_svc.repo.PaymentRepository` in memory: `accounts` {user_id: balance}, `inbox` {order_id: row},
    `debits` (each `Debit` taken), `movements` (the ledger as the API pages it), `outbox` (queued results).
    Users in `busy` are being settled by another transaction (their advisory lock is taken)."""

    def __init__(self, accounts=None, inbox=(), busy=()):
        super().__init__()
        self.accounts = dict(accounts or {})
        self.inbox = {row["order_id"]: {"acked": False, "traceparent": None, **row} for row in inbox}
        self.busy = set(busy)
        self.debits, self.movements, self.outbox, self.credits = [], [], [], []
        self.deleted, self.made_due, self.locked, self.limits = [], [], [], []

    async def run_once(self, cur, idempotent, work, *args):
        in_transaction(cur)
        outcome = self.earlier(idempotent)
        if isinstance(outcome, IdempotencyKeyReused):
            raise outcome
        if outcome is None:
            outcome = Outcome(await work(cur, *args), replayed=False)
            self.store(idempotent, outcome.result)
        return outcome

    async def create_account(self, cur, user_id):
        in_transaction(cur)
        if user_id in self.accounts:
            return None
        self.accounts[user_id] = Decimal(0)
        return {"user_id": user_id, "balance": Decimal(0)}

    async def get_account(self, cur, user_id, lock=False):
        in_transaction(cur)
        self.locked.append(lock)
        return {"user_id": user_id, "balance": self.accounts[user_id]} if user_id in self.accounts else None

    async def credit(self, cur, user_id, amount, balance, origin):
        in_transaction(cur)
        self.accounts[user_id] = balance
        self.credits.append((user_id, amount, balance, origin))
        return {"user_id": user_id, "balance": balance}

    async def list_movements(self, cur, user_id, after, limit):
        in_transaction(cur)
        self.limits.append(limit)
        return [m for m in self.movements if m["user_id"] == user_id and m["id"] > after][:limit]

    async def store_requests(self, cur, requests):
        in_transaction(cur)
        for request in requests:
            row = self.inbox.setdefault(request.order_id, {
                "order_id": request.order_id, "user_id": request.user_id, "amount": request.amount,
                "status": OrderStatus.NEW, "traceparent": None})
            row["acked"] = False
            row["traceparent"] = request.trace or row["traceparent"]

    async def settle(self, cur, requests, user_ids, pick, due_in, done_ids=()):
        """`PostgresPayments.settle` in memory: the same rule (`decide`), which tests/integration/
        test_settle_statement.py holds against the real statement with the cases of tests/unit/test_settle.py."""
        in_transaction(cur)
        self.deleted.extend(done_ids)
        waiting = sorted({r["user_id"] for r in self.inbox.values() if not r["acked"]},
                         key=lambda u: min(r["order_id"] for r in self.inbox.values()
                                           if r["user_id"] == u and not r["acked"]))
        candidates = set(user_ids) | set(waiting[:pick])
        claimed = {u for u in candidates if u not in self.busy}
        batch = {r.order_id: r for r in requests}
        await self.store_requests(cur, [batch[order_id] for order_id in sorted(batch)])
        pending = sorted((r for r in self.inbox.values() if r["user_id"] in claimed
                          and (not r["acked"] or r["order_id"] in batch)), key=lambda r: (r["user_id"], r["order_id"]))
        statuses, debits = decide(pending, {u: self.accounts[u] for u in claimed if u in self.accounts})
        for debit in sorted(debits, key=lambda d: d.order_id):  # the ledger's order, as the statement writes it
            self.accounts[debit.user_id] = debit.balance
            self.movements.append({"id": len(self.movements) + 1, "user_id": debit.user_id, "kind": "debit",
                                   "amount": debit.amount, "balance": debit.balance, "order_id": debit.order_id})
        self.debits.extend(sorted(debits, key=lambda d: d.order_id))
        queued = []
        for row in pending:
            row.update(status=statuses[row["order_id"]], acked=True)
            queued.append({"id": len(self.outbox) + 1, "order_id": row["order_id"], "status": row["status"],
                           "due_in": due_in, "traceparent": row["traceparent"], "user_id": row["user_id"],
                           "amount": row["amount"]})
            self.outbox.append(queued[-1])
        return Settled(len(candidates), len(claimed), queued)

    async def lock_outbox(self, cur, limit):
        in_transaction(cur)
        self.limits.append(limit)
        return [row for row in self.outbox if row["id"] not in self.deleted][:limit]

    async def delete_outbox(self, cur, ids):
        in_transaction(cur)
        self.deleted.extend(ids)

    async def make_due(self, cur, ids):
        in_transaction(cur)
        self.made_due.extend(ids)

    async def backlog(self, cur):
        in_transaction(cur)
        return {"inbox": (sum(not r["acked"] for r in self.inbox.values()), 0.0),
                "outbox_ps": (len(self.outbox) - len(self.deleted), 0.0)}

    async def forget_processed(self, cur, days, limit):
        in_transaction(cur)
        self.deleted.append(("inbox", days, limit))
        return False


async def let_run(ticks=5):
    """Yield to the event loop `ticks` times: whatever is ready runs meanwhile (a task started, a callback due),
    and nothing waits on a clock. Enough for work that needs no I/O and no timer to get as far as it can."""
    for _ in range(ticks):
        await asyncio.sleep(0)


class Kicks:
    """A `kick` callable that counts its calls."""

    def __init__(self):
        self.count = 0

    def __call__(self):
        self.count += 1


class Number:
    """A message type whose entries are `{"n": <integer>}`, read as the integer."""
    FIELDS = ("n",)

    @classmethod
    def from_entry(cls, data):
        if not isinstance(data["n"], int):
            raise InvalidMessage("not a number")
        return data["n"]


def received(message, *items):
    """`message` delivered with these items (or the `InvalidMessage`s they were refused with) as its entries."""
    return Received(message, [Entry(item, None, json.dumps({"entry": str(item)})) for item in items])


def unreadable(message, reason):
    """`message` delivered with a body that cannot be read at all."""
    return Received(message, InvalidMessage(reason))


class FakeConsuming:
    """The channel a consumer consumes on (`NodeChannel`): records its consumes and cancels, and the callbacks
    consuming each queue."""

    def __init__(self):
        self.events = []
        self.callbacks = {}

    async def consume(self, name, callback):
        self.events.append("consume")
        self.callbacks.setdefault(name, []).append(callback)
        return "tag"

    async def cancel(self, callback):
        self.events.append("cancel")
