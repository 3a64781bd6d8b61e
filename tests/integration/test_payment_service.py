from decimal import Decimal

import pytest

from common.broker.messages import ORDER_REQUESTS, PaymentRequest
from common.observability.metrics import CONSUMED
from payment_svc.repo import PostgresPayments
from payment_svc.service import clean_up
from tests.conftest import eventually
from tests.integration.http import request


async def inbox_row(service, order_id):
    async def read(cur):
        await cur.execute("SELECT status, acked FROM inbox WHERE order_id = %s", (order_id,))
        return await cur.fetchone()
    return await service.db.run(read)


async def balance(service, user_id):
    code, body = await request(service.port, "GET", f"/payments/{user_id}")
    assert code == 200
    return Decimal(str(body["account"]["balance"]))


@pytest.mark.gen_test(timeout=30)
async def test_account_lifecycle_and_its_failures(payment_service, user_id):
    port = payment_service.port
    assert await request(port, "GET", f"/payments/{user_id}") == \
        (404, {"status": "Fail", "message": f"Account for user {user_id} not found."})
    assert await request(port, "PUT", f"/payments/{user_id}", {"amount": 5}) == \
        (404, {"status": "Fail", "message": f"Account for user {user_id} not found."})
    assert await request(port, "POST", "/payments", {"user_id": user_id}) == \
        (201, {"status": "Success", "message": "Account created.", "account": {"user_id": user_id, "balance": 0}})
    assert await request(port, "POST", "/payments", {"user_id": user_id}) == \
        (409, {"status": "Fail", "message": f"Account for user {user_id} already exists."})
    code, body = await request(port, "PUT", f"/payments/{user_id}", {"amount": "1000.50"})
    assert (code, body["account"]["balance"]) == (200, Decimal("1000.50"))
    code, body = await request(port, "PUT", f"/payments/{user_id}", {"amount": 0})
    assert (code, body) == (400, {"status": "Fail", "message": "'amount' must be greater than 0."})
    assert await balance(payment_service, user_id) == Decimal("1000.50")


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("method, path, body, code, message", [
    ("POST", "/payments", {"user_id": "x"}, 400, "'user_id' must be a positive integer."),
    ("POST", "/payments", {}, 400, "Missing field 'user_id'."),
    ("PUT", "/payments/abc", {"amount": 1}, 400, "'user_id' must be a positive integer."),
    ("GET", "/payments/0", None, 400, "'user_id' must be a positive integer up to 9223372036854775807."),
    ("DELETE", "/payments/1", None, 405, "Method DELETE not allowed on /payments/1."),
    ("GET", "/nowhere", None, 404, "No route for /nowhere."),
])
async def test_bad_requests_get_a_4xx_envelope(payment_service, method, path, body, code, message):
    assert await request(payment_service.port, method, path, body) == (code, {"status": "Fail", "message": message})


def consumed_requests():
    return CONSUMED.labels(ORDER_REQUESTS)._value.get()


async def ledger(service, order_id):
    async def read(cur):
        await cur.execute("SELECT kind, amount FROM account_movements WHERE order_id = %s", (order_id,))
        return await cur.fetchall()
    return await service.db.run(read)


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("payment_service", [{"fast_path": True}, {"fast_path": False}], indirect=True,
                         ids=["settled by the consumer", "settled by the inbox worker"])
async def test_duplicate_payment_request_debits_once(payment_service, user_id):
    """Each copy is published only once the one before was consumed and acked, so every repeat meets the
    request already settled, in a transaction of its own (with the fast path: inside the consumer's)."""
    await request(payment_service.port, "POST", "/payments", {"user_id": user_id})
    await request(payment_service.port, "PUT", f"/payments/{user_id}", {"amount": 100})
    order_id = user_id  # unique per test as well
    message = PaymentRequest(order_id, user_id, Decimal("30")).encode()

    async def settled():
        assert await inbox_row(payment_service, order_id) == ("FINISHED", True)
    for _ in range(5):
        before = consumed_requests()
        await payment_service.broker.publisher.publish(ORDER_REQUESTS, message, order_id)
        await eventually(lambda before=before: assert_more(consumed_requests(), before))
        await eventually(settled)  # the repeat was settled again (re-sent its status), never debited
    assert await balance(payment_service, user_id) == Decimal("70.00")
    assert await ledger(payment_service, order_id) == [("debit", Decimal("30.00"))]


def assert_more(now, before):
    assert now > before


@pytest.mark.gen_test(timeout=30)
async def test_request_without_account_is_cancelled_and_debits_nothing(payment_service, user_id):
    message = PaymentRequest(user_id, user_id, Decimal(1)).encode()
    await payment_service.broker.publisher.publish(ORDER_REQUESTS, message, 1)

    async def cancelled():
        assert await inbox_row(payment_service, user_id) == ("CANCELLED", True)
    await eventually(cancelled)


@pytest.mark.gen_test(timeout=30)
async def test_top_up_retried_with_same_idempotency_key_credits_once(payment_service, user_id):
    port = payment_service.port
    create = await request(port, "POST", "/payments", {"user_id": user_id}, headers={"Idempotency-Key": "c1"})
    assert create == await request(port, "POST", "/payments", {"user_id": user_id}, headers={"Idempotency-Key": "c1"})
    assert create[0] == 201
    key = {"Idempotency-Key": f"topup-{user_id}"}
    replies = [await request(port, "PUT", f"/payments/{user_id}", {"amount": 40}, headers=key) for _ in range(3)]
    assert all(reply == (200, replies[0][1]) for reply in replies)
    assert await balance(payment_service, user_id) == Decimal("40.00")
    code, body = await request(port, "PUT", f"/payments/{user_id}", {"amount": 41}, headers=key)
    assert code == 422
    assert await balance(payment_service, user_id) == Decimal("40.00")


@pytest.mark.gen_test(timeout=30)
async def test_clean_up_forgets_only_settled_rows_and_keys_past_their_retention(payment_service, user_id):
    old, recent, unsettled = user_id, user_id + 1, user_id + 2

    async def seed(cur):
        await cur.execute(
            "INSERT INTO inbox (order_id, user_id, amount, status, acked, processed_at) VALUES "
            "(%s, 1, 1, 'FINISHED', true, now() - interval '8 days'), (%s, 1, 1, 'CANCELLED', true, now()), "
            "(%s, 1, 1, 'NEW', false, NULL)", (old, recent, unsettled))
        await cur.execute("INSERT INTO idempotency_keys (key, fingerprint, result, created_at) VALUES "
                          "(%s, 'f', '{}', now() - interval '25 hours'), (%s, 'f', '{}', now())",
                          (f"old-{user_id}", f"new-{user_id}"))
    await payment_service.db.run(seed)
    while await clean_up(payment_service.db, PostgresPayments(), payment_service.settings):
        pass

    async def remaining(cur):
        await cur.execute("SELECT order_id FROM inbox WHERE order_id IN (%s, %s, %s)", (old, recent, unsettled))
        orders = {row[0] for row in await cur.fetchall()}
        await cur.execute("SELECT key FROM idempotency_keys WHERE key LIKE %s", (f"%-{user_id}",))
        return orders, {row[0] for row in await cur.fetchall()}
    # The service's own clean-up worker (kicked at start) may hold a row of this batch at that moment: skipped
    # here (SKIP LOCKED), it is deleted by the worker's transaction instead.

    async def only_the_kept_remain():
        assert await payment_service.db.run(remaining) == ({recent, unsettled}, {f"new-{user_id}"})
    await eventually(only_the_kept_remain, timeout=10)
