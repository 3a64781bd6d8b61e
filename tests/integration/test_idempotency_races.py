"""Concurrent requests with the same `Idempotency-Key` (a client retrying before its first try answered): exactly
one order, exactly one credit, and every copy gets the first one's answer. Top-up ceiling: a top-up that would
take the balance over NUMERIC(14, 2) is refused and changes nothing."""
import asyncio
from decimal import Decimal

import pytest

from payment_svc.service import MAX_BALANCE
from tests.integration.http import request

COPIES = 8


async def concurrently(port, method, path, body, key):
    return await asyncio.gather(*(request(port, method, path, body, headers={"Idempotency-Key": key})
                                  for _ in range(COPIES)))


async def count(service, sql, *params):
    async def read(cur):
        await cur.execute(sql, params)
        return (await cur.fetchone())[0]
    return await service.db.run(read)


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_orders_with_one_key_create_one_order(order_service, user_id):
    replies = await concurrently(order_service.port, "POST", "/orders", {"user_id": user_id, "amount": "9.99"},
                                 f"race-{user_id}")
    assert [code for code, _ in replies] == [201] * COPIES, replies
    assert len({body["order_id"] for _, body in replies}) == 1, replies
    assert await count(order_service, "SELECT count(*) FROM orders WHERE user_id = %s", user_id) == 1
    assert await count(order_service, "SELECT count(*) FROM outbox_os WHERE order_id = %s",
                       replies[0][1]["order_id"]) <= 1


@pytest.mark.gen_test(timeout=30)
async def test_concurrent_top_ups_with_one_key_credit_once(payment_service, user_id):
    port = payment_service.port
    assert (await request(port, "POST", "/payments", {"user_id": user_id}))[0] == 201
    replies = await concurrently(port, "PUT", f"/payments/{user_id}", {"amount": "12.34"}, f"race-{user_id}")
    assert [code for code, _ in replies] == [200] * COPIES, replies
    assert {body["account"]["balance"] for _, body in replies} == {Decimal("12.34")}
    code, body = await request(port, "GET", f"/payments/{user_id}")
    assert (code, body["account"]["balance"]) == (200, Decimal("12.34"))
    assert await count(payment_service, "SELECT count(*) FROM account_movements WHERE user_id = %s AND kind = "
                       "'credit'", user_id) == 1


@pytest.mark.gen_test(timeout=30)
async def test_a_top_up_over_the_balance_ceiling_is_refused_and_changes_nothing(payment_service, user_id):
    port = payment_service.port
    assert (await request(port, "POST", "/payments", {"user_id": user_id}))[0] == 201
    # A top-up is at most 1,000,000,000.00: start near the ceiling instead of a thousand top-ups.
    await payment_service.db.run(lambda cur: cur.execute("UPDATE accounts SET balance = %s WHERE user_id = %s",
                                                         (MAX_BALANCE - 1, user_id)))
    assert await request(port, "PUT", f"/payments/{user_id}", {"amount": "1.01"}) == \
        (400, {"status": "Fail", "message": f"Balance would exceed {MAX_BALANCE}."})
    code, body = await request(port, "GET", f"/payments/{user_id}")
    assert (code, body["account"]["balance"]) == (200, MAX_BALANCE - 1)
    assert await count(payment_service, "SELECT count(*) FROM account_movements WHERE user_id = %s", user_id) == 0
    # Exactly up to the ceiling is allowed.
    code, body = await request(port, "PUT", f"/payments/{user_id}", {"amount": "1.00"})
    assert (code, body["account"]["balance"]) == (200, MAX_BALANCE)
