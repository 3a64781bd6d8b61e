"""The account ledger: a movement per balance change, in the same transaction, listed page by page."""
from decimal import Decimal

import psycopg2.errors
import pytest

from common.broker.messages import ORDER_REQUESTS, PaymentRequest
from tests.conftest import eventually
from tests.integration.http import request


async def movements(port, user_id, **query):
    path = f"/payments/{user_id}/movements" + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    return await request(port, "GET", path)


async def ledger_rows(service, user_id):
    async def read(cur):
        await cur.execute("SELECT kind, amount, balance, order_id, request_key FROM account_movements "
                          "WHERE user_id = %s ORDER BY id", (user_id,))
        return await cur.fetchall()
    return await service.db.run(read)


async def inbox_status(service, order_id):
    async def read(cur):
        await cur.execute("SELECT status FROM inbox WHERE order_id = %s AND acked", (order_id,))
        return await cur.fetchone()
    return await service.db.run(read)


@pytest.mark.gen_test(timeout=30)
async def test_top_ups_and_debits_each_write_one_movement_with_the_balance_after_it(payment_service, user_id):
    port = payment_service.port
    await request(port, "POST", "/payments", {"user_id": user_id})
    assert await movements(port, user_id) == (200, {"status": "Success", "message": f"0 movements of user {user_id}.",
                                                   "movements": [], "next_cursor": None})
    await request(port, "PUT", f"/payments/{user_id}", {"amount": "100.10"}, headers={"Idempotency-Key": "k-1"})
    await request(port, "PUT", f"/payments/{user_id}", {"amount": 5}, headers={"X-Request-ID": "r-2"})
    for order_id, amount in ((user_id, "60"), (user_id + 1, "60"), (user_id + 2, "45.10")):
        message = PaymentRequest(order_id, user_id, Decimal(amount))
        await payment_service.broker.publisher.publish(ORDER_REQUESTS, message.encode(), order_id)

    async def all_settled():
        assert [await inbox_status(payment_service, user_id + i) for i in range(3)] == \
            [("FINISHED",), ("CANCELLED",), ("FINISHED",)]
    await eventually(all_settled)

    assert await ledger_rows(payment_service, user_id) == [
        ("credit", Decimal("100.10"), Decimal("100.10"), None, "k-1"),
        ("credit", Decimal("5.00"), Decimal("105.10"), None, "r-2"),
        ("debit", Decimal("60.00"), Decimal("45.10"), user_id, None),
        ("debit", Decimal("45.10"), Decimal("0.00"), user_id + 2, None),
    ]
    code, body = await movements(port, user_id)
    assert code == 200 and body["next_cursor"] is None
    assert [(m["kind"], m["amount"], m["balance"], m["order_id"]) for m in body["movements"]] == [
        ("credit", Decimal("100.10"), Decimal("100.10"), None),
        ("credit", Decimal("5.00"), Decimal("105.10"), None),
        ("debit", Decimal("60.00"), Decimal("45.10"), user_id),
        ("debit", Decimal("45.10"), Decimal("0.00"), user_id + 2)]
    assert all(m["created_at"].startswith("20") for m in body["movements"])


@pytest.mark.gen_test(timeout=30)
async def test_movements_are_paginated_with_a_cursor(payment_service, user_id):
    port = payment_service.port
    other = user_id + 1  # its movements lie between this user's: a page must skip them, not stop at them
    for user in (user_id, other):
        await request(port, "POST", "/payments", {"user_id": user})
    for amount in range(1, 6):
        await request(port, "PUT", f"/payments/{user_id}", {"amount": amount})
        await request(port, "PUT", f"/payments/{other}", {"amount": 100})
    code, first = await movements(port, user_id, limit=2)
    assert code == 200 and [m["amount"] for m in first["movements"]] == [1, 2] and first["next_cursor"]
    _, second = await movements(port, user_id, limit=2, cursor=first["next_cursor"])
    _, third = await movements(port, user_id, limit=2, cursor=second["next_cursor"])
    assert [m["amount"] for m in second["movements"]] == [3, 4]
    assert [m["balance"] for m in third["movements"]] == [15] and third["next_cursor"] is None


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("query, message", [
    ("?cursor=x", "'cursor' must be a positive integer."),
    ("?limit=0", "'limit' must be a positive integer up to 9223372036854775807."),
    ("?limit=1001", "'limit' must be at most 1000."),
])
async def test_bad_cursor_or_limit_is_a_400(payment_service, user_id, query, message):
    await request(payment_service.port, "POST", "/payments", {"user_id": user_id})
    assert await request(payment_service.port, "GET", f"/payments/{user_id}/movements{query}") == \
        (400, {"status": "Fail", "message": message})


@pytest.mark.gen_test(timeout=30)
async def test_movements_of_an_unknown_account_are_a_404(payment_service, user_id):
    assert await movements(payment_service.port, user_id) == \
        (404, {"status": "Fail", "message": f"Account for user {user_id} not found."})


@pytest.mark.gen_test(timeout=30)
async def test_a_second_debit_of_one_order_is_refused_by_the_database(payment_service, user_id):
    await request(payment_service.port, "POST", "/payments", {"user_id": user_id})
    await request(payment_service.port, "PUT", f"/payments/{user_id}", {"amount": 10})

    def debit(order_id, balance):
        async def insert(cur):
            await cur.execute("INSERT INTO account_movements (user_id, kind, amount, balance, order_id) "
                              "VALUES (%s, 'debit', 1, %s, %s)", (user_id, balance, order_id))
        return payment_service.db.run(insert)
    await debit(user_id, 9)
    await debit(user_id + 1, 8)  # the same user's other order: the constraint is per order
    with pytest.raises(psycopg2.errors.UniqueViolation, match="account_movements_one_debit_per_order"):
        await debit(user_id, 7)


@pytest.mark.gen_test(timeout=30)
async def test_accounts_from_before_the_ledger_get_an_opening_credit(payment_service, user_id):
    """Drop the table as if the database predated it; the schema brings it back with opening balances."""
    port = payment_service.port
    await request(port, "POST", "/payments", {"user_id": user_id})
    await request(port, "PUT", f"/payments/{user_id}", {"amount": "12.34"})
    await request(port, "POST", "/payments", {"user_id": user_id + 1})

    async def drop_ledger(cur):
        await cur.execute("DROP TABLE account_movements")
    await payment_service.db.run(drop_ledger)
    await payment_service.db.apply_schema("payment_svc")
    await payment_service.db.apply_schema("payment_svc")  # idempotent: no second opening credit

    assert await ledger_rows(payment_service, user_id) == [
        ("credit", Decimal("12.34"), Decimal("12.34"), None, "opening balance")]
    assert await ledger_rows(payment_service, user_id + 1) == []
