"""The settling rule, case by case, on the in-memory repository (`InMemoryPayments.settle`). The same cases run
against PostgreSQL's statement in tests/integration/test_settle_statement.py, so the fake and the product cannot
drift apart: a case states the inbox and accounts before, the batch received, and what must come out."""
from decimal import Decimal
from typing import NamedTuple

import pytest

from common.broker.messages import PaymentRequest
from tests.unit.fakes import FakeCursor, InMemoryPayments

F, C, N = "FINISHED", "CANCELLED", "NEW"


class Case(NamedTuple):
    accounts: dict  # {user: balance} before
    inbox: list  # rows before: (order, user, amount, status, acked)
    requests: list  # the batch received: (order, user, amount)
    inbox_after: dict  # {order: (status, acked)}
    balances: dict  # {user: balance} after
    ledger: list  # debits written: (user, order, amount, balance after), in order
    queued: list  # results queued for the Order Service: (order, status), in order
    claimed: int
    pick: int = 0  # users with the oldest unacked requests to take as well (the inbox worker's step)
    busy: tuple = ()  # users another transaction is settling


CASES = {
    "an earlier order is paid first and a later one it leaves short cancelled": Case(
        {1: "1000"}, [], [(1, 1, "1000"), (2, 1, "1000")], {1: (F, True), 2: (C, True)}, {1: "0"},
        [(1, 1, "1000", "0")], [(1, F), (2, C)], claimed=1),
    "a cancelled order does not stop a later one the balance still covers": Case(
        {1: "100"}, [], [(1, 1, "80"), (2, 1, "50"), (3, 1, "20")], {1: (F, True), 2: (C, True), 3: (F, True)},
        {1: "0"}, [(1, 1, "80", "20"), (1, 3, "20", "0")], [(1, F), (2, C), (3, F)], claimed=1),
    "each debit records the balance it leaves, a user's results queued together": Case(
        {1: "100", 2: "5"}, [], [(1, 1, "30"), (2, 2, "5"), (3, 1, "50"), (4, 1, "25")],
        {1: (F, True), 2: (F, True), 3: (F, True), 4: (C, True)}, {1: "20", 2: "0"},
        [(1, 1, "30", "70"), (2, 2, "5", "0"), (1, 3, "50", "20")], [(1, F), (3, F), (4, C), (2, F)], claimed=2),
    "an order of a user without an account is cancelled": Case(
        {}, [], [(3, 9, "1")], {3: (C, True)}, {}, [], [(3, C)], claimed=1),
    "a settled request received again keeps its status and is debited once": Case(
        {1: "100"}, [(4, 1, "5", F, True), (5, 1, "5", C, True)], [(4, 1, "5"), (5, 1, "5")],
        {4: (F, True), 5: (C, True)}, {1: "100"}, [], [(4, F), (5, C)], claimed=1),
    "a request waiting in the inbox is settled before the batch's later one": Case(
        {1: "10"}, [(1, 1, "10", N, False)], [(2, 1, "5")], {1: (F, True), 2: (C, True)}, {1: "0"},
        [(1, 1, "10", "0")], [(1, F), (2, C)], claimed=1),
    "a request stored before keeps its stored amount": Case(
        {1: "10"}, [(1, 1, "7", N, False)], [(1, 1, "9")], {1: (F, True)}, {1: "3"}, [(1, 1, "7", "3")],
        [(1, F)], claimed=1),
    "a busy user's requests are stored unacked and left alone": Case(
        {1: "10", 2: "10"}, [], [(1, 1, "4"), (2, 2, "4")], {1: (F, True), 2: (N, False)}, {1: "6", 2: "10"},
        [(1, 1, "4", "6")], [(1, F)], claimed=1, busy=(2,)),
    "a busy user's settled request received again is unacked again, its status kept": Case(
        {2: "10"}, [(2, 2, "4", F, True)], [(2, 2, "4")], {2: (F, False)}, {2: "10"}, [], [], claimed=0,
        busy=(2,)),
    "the inbox worker's step takes the users whose requests waited longest": Case(
        {1: "10", 2: "10"}, [(5, 2, "1", N, False), (6, 1, "1", N, False), (7, 2, "1", N, False)], [],
        {5: (F, True), 6: (N, False), 7: (F, True)}, {1: "10", 2: "8"}, [(2, 5, "1", "9"), (2, 7, "1", "8")],
        [(5, F), (7, F)], claimed=1, pick=1),
}


def requests_of(case, order=0, user=0):
    return [PaymentRequest(o + order, u + user, Decimal(a)) for o, u, a in case.requests]


def users_of(case, user=0):
    return sorted({u + user for _, u, _ in case.requests})


def expected(case):
    """What a case must leave, with amounts as Decimals: (inbox, balances, ledger, queued, claimed)."""
    return (case.inbox_after, {u: Decimal(b) for u, b in case.balances.items()},
            [(u, o, Decimal(a), Decimal(b)) for u, o, a, b in case.ledger], case.queued, case.claimed)


@pytest.mark.gen_test
@pytest.mark.parametrize("name", list(CASES))
async def test_the_in_memory_repository_settles_by_the_rule(name):
    case = CASES[name]
    repo = InMemoryPayments({u: Decimal(b) for u, b in case.accounts.items()},
                            [{"order_id": o, "user_id": u, "amount": Decimal(a), "status": s, "acked": k}
                             for o, u, a, s, k in case.inbox], busy=case.busy)
    settled = await repo.settle(FakeCursor(), requests_of(case), users_of(case), case.pick, 5.0)
    inbox = {o: (repo.inbox[o]["status"], repo.inbox[o]["acked"]) for o in case.inbox_after}
    ledger = [(d.user_id, d.order_id, d.amount, d.balance) for d in repo.debits]
    assert (inbox, repo.accounts, ledger, [(r["order_id"], r["status"]) for r in settled.queued],
            settled.claimed) == expected(case)


@pytest.mark.gen_test
async def test_confirmed_results_handed_to_a_settling_are_deleted_by_it():
    repo = InMemoryPayments()
    await repo.settle(FakeCursor(), [], [], 0, 0, done_ids=[3, 4])
    assert repo.deleted == [3, 4]
