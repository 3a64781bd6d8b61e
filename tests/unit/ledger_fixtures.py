"""A simulated run's databases, consistent by construction, for the checker's own tests: accounts topped up
(some top-ups unanswered, applied or not), orders finished or cancelled, a ledger row for every balance change."""
import random
from dataclasses import dataclass, field
from decimal import Decimal

from harness.invariants import Snapshot
from harness.ledger import CREDIT, DEBIT, Movement, TopUp

NO_WORK = {"orders NEW": 0, "outbox_os": 0, "outbox_ps": 0, "inbox unacked": 0}


def cents(rng, low, high):
    return Decimal(rng.randint(low, high)) / 100


@dataclass
class SimulatedRun:
    """Builds a `Snapshot` and the journal's `TopUp`s as the real system would leave them."""
    rng: random.Random
    orders: dict = field(default_factory=dict)
    inbox: dict = field(default_factory=dict)
    balances: dict = field(default_factory=dict)
    movements: list = field(default_factory=list)
    top_ups: list = field(default_factory=list)

    def _move(self, user, kind, amount, order_id=None, key=None):
        balance = self.balances[user] + (amount if kind == CREDIT else -amount)
        self.balances[user] = balance
        self.movements.append(Movement(len(self.movements) + 1, user, kind, amount, balance, order_id, key))

    def account(self, user):
        self.balances[user] = Decimal(0)

    def top_up(self, user, amount, answered=True, applied=None):
        """`answered`: True / False / None (no answer); `applied` (for unanswered ones) whether it took effect."""
        key = f"k{len(self.top_ups)}"
        self.top_ups.append(TopUp(key, user, amount, answered))
        if answered is True or (answered is None and applied):
            self._move(user, CREDIT, amount, key=key)

    def order(self, user, amount):
        order_id = len(self.orders) + 1
        funded = user in self.balances and self.balances[user] >= amount
        status = "FINISHED" if funded else "CANCELLED"
        self.orders[order_id] = (user, amount, status, f"order {order_id}")
        self.inbox[order_id] = (user, amount, status, True)
        if funded:
            self._move(user, DEBIT, amount, order_id=order_id)
        return order_id

    def snapshot(self):
        return Snapshot(dict(self.orders), dict(self.inbox), dict(self.balances), list(self.movements),
                        dict(NO_WORK))


def busy_account(seed, unanswered=24, users=3):
    """A run where user 1 has `unanswered` top-ups without an answer (a random subset of them applied), mixed
    with answered top-ups and orders; other users ordinary."""
    rng = random.Random(seed)
    run = SimulatedRun(rng)
    for user in range(1, users + 1):
        run.account(user)
        run.top_up(user, cents(rng, 5000, 40000))
    steps = ["ambiguous"] * unanswered + ["top_up"] * 5 + ["order"] * 40
    rng.shuffle(steps)
    for step in steps:
        user = 1 if step == "ambiguous" else rng.randint(1, users)
        if step == "ambiguous":
            run.top_up(user, cents(rng, 2000, 20000), answered=None, applied=rng.random() < 0.5)
        elif step == "top_up":
            run.top_up(user, cents(rng, 2000, 20000))
        else:
            run.order(user, cents(rng, 100, 9000))
    run.order(users + 1, Decimal("5.00"))  # a user without an account: cancelled
    return run
