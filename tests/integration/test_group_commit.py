"""Group commit of `POST /orders` on the real database: concurrent requests share transactions, each gets its own
order (or its own replay or refusal), and every order has its outbox row written as its request asked."""
import asyncio
import secrets
from decimal import Decimal

import pytest

from common.db.idempotency import IdempotentRequest
from order_svc.repo import OrderRequest, OutboxSchedule, Placement, PostgresOrders
from tests.integration.http import request


async def rows(service, sql, *args):
    async def read(cur):
        await cur.execute(sql, args)
        return await cur.fetchall()
    return await service.db.run(read, transaction=False)


def post(service, user_id, amount, key=None):
    return request(service.port, "POST", "/orders", {"user_id": user_id, "amount": amount, "description": "g"},
                   headers={"Idempotency-Key": key} if key else None)


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_orders_share_transactions_and_each_gets_its_own(order_service, user_id):
    answers = await asyncio.gather(*(post(order_service, user_id, n) for n in range(1, 41)))
    assert {code for code, _ in answers} == {201}
    placed = {body["order_id"]: body["order"]["amount"] for _, body in answers}
    assert sorted(placed.values()) == list(range(1, 41))  # each answer is its own request's order
    found = await rows(order_service, "SELECT o.order_id, o.amount, o.xmin::text, b.amount FROM orders o "
                                      "JOIN outbox_os b USING (order_id) WHERE o.user_id = %s", user_id)
    assert {order_id: amount for order_id, amount, _, _ in found} == placed
    assert all(amount == queued for _, amount, _, queued in found)
    transactions = {xmin for _, _, xmin, _ in found}
    assert len(transactions) < 40, "every order had a transaction of its own: no group commit"


@pytest.mark.gen_test(timeout=30)
async def test_one_key_twice_in_a_batch_is_one_order_and_a_reused_key_is_refused_alone(order_service, user_id):
    key, reused = f"g-{secrets.token_hex(6)}", f"g-{secrets.token_hex(6)}"
    answers = await asyncio.gather(post(order_service, user_id, 5, key), post(order_service, user_id, 5, key),
                                   post(order_service, user_id, 6, reused), post(order_service, user_id, 7, reused),
                                   post(order_service, user_id, 8))
    assert [code for code, _ in answers[:2]] == [201, 201] and answers[0][1] == answers[1][1]  # one is a replay
    # The requests reach the service in any order: whichever use of `reused` came first won, the other is refused.
    (won, placed), (_, refused) = sorted(answers[2:4], key=lambda answer: answer[0])
    assert won == 201 and refused["message"] == \
        f"'Idempotency-Key' {reused!r} was already used with a different request."
    assert answers[4][0] == 201
    found = await rows(order_service, "SELECT amount FROM orders WHERE user_id = %s", user_id)
    assert sorted(amount for amount, in found) == sorted([5, placed["order"]["amount"], 8])


@pytest.mark.gen_test(timeout=30)
async def test_a_batch_replays_earlier_keys_and_writes_each_outbox_row_as_asked(order_service, user_id):
    earlier = IdempotentRequest("", f"g-{secrets.token_hex(6)}", "fp")
    one, two, three = (Placement(user_id, Decimal(n), f"d{n}", OutboxSchedule(0, due_in), f"tp{n}")
                       for n, due_in in ((1, 0), (2, 60), (3, 0)))

    async def batch(cur, requests, placements):
        return await PostgresOrders().place_orders(cur, [OrderRequest(*pair) for pair in zip(requests, placements)])

    [first] = await order_service.db.run(batch, [earlier], [one])
    outcomes = await order_service.db.run(batch, [None, earlier, IdempotentRequest("", earlier.key, "other"), None],
                                          [two, one, one, three])
    assert [o.replayed for o in (outcomes[0], outcomes[1], outcomes[3])] == [False, True, False]
    assert outcomes[1].result == first.result and outcomes[2].message.startswith("'Idempotency-Key'")
    assert [o.result["amount"] for o in (first, outcomes[0], outcomes[3])] == [1, 2, 3]
    found = await rows(order_service, "SELECT o.description, b.traceparent, b.next_attempt_at > clock_timestamp() "
                                      "FROM orders o JOIN outbox_os b USING (order_id) WHERE o.user_id = %s "
                                      "ORDER BY order_id", user_id)
    assert found == [("d1", "tp1", False), ("d2", "tp2", True), ("d3", "tp3", False)]
