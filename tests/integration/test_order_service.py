from decimal import Decimal

import pytest
from tornado.httpclient import AsyncHTTPClient

from common.broker.messages import PAYMENT_RESULTS, PaymentResult
from harness.metrics import sample_total
from tests.conftest import eventually
from tests.integration.http import request


async def outbox_row(service, order_id):
    async def read(cur):
        await cur.execute("SELECT attempts FROM outbox_os WHERE order_id = %s", (order_id,))
        return await cur.fetchone()
    return await service.db.run(read)


async def place(service, user_id, amount=10, description="d"):
    code, body = await request(service.port, "POST", "/orders",
                               {"user_id": user_id, "amount": amount, "description": description})
    assert code == 201, body
    return body


@pytest.mark.gen_test(timeout=30)
async def test_order_is_created_new_and_readable(order_service, user_id):
    body = await place(order_service, user_id, "12.30", "a book")
    order = {"order_id": body["order_id"], "user_id": user_id, "amount": Decimal("12.30"),
             "description": "a book", "status": "NEW"}
    assert body == {"status": "Success", "message": "Order created.", "order_id": order["order_id"], "order": order}
    code, got = await request(order_service.port, "GET", f"/orders/{order['order_id']}")
    assert (code, got["order"]) == (200, order)
    code, listed = await request(order_service.port, "GET", f"/orders?user={user_id}")
    assert (code, listed["orders"], listed["next_cursor"]) == (200, [order], None)


@pytest.mark.gen_test(timeout=30)
async def test_orders_list_pages_with_a_cursor(order_service, user_id):
    ids = [(await place(order_service, user_id))["order_id"] for _ in range(5)]
    code, first = await request(order_service.port, "GET", f"/orders?user={user_id}&limit=2")
    assert [o["order_id"] for o in first["orders"]] == ids[:2] and first["next_cursor"] == ids[1]
    seen, cursor = ids[:2], first["next_cursor"]
    while cursor:
        _, page = await request(order_service.port, "GET", f"/orders?user={user_id}&limit=2&cursor={cursor}")
        seen += [o["order_id"] for o in page["orders"]]
        cursor = page["next_cursor"]
    assert seen == ids
    _, everyone = await request(order_service.port, "GET", "/orders?user=")
    assert len(everyone["orders"]) >= 5


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("method, path, body, code, message", [
    ("POST", "/orders", {"user_id": 1}, 400, "Missing field 'amount'."),
    ("POST", "/orders", {"user_id": 1, "amount": -1}, 400, "'amount' must be greater than 0."),
    ("POST", "/orders", {"user_id": 1, "amount": 1, "description": "x" * 1001}, 400,
     "'description' must be at most 1000 characters."),
    ("GET", "/orders?user=abc", None, 400, "'user' must be a positive integer."),
    ("GET", "/orders?limit=5000", None, 400, "'limit' must be at most 1000."),
    ("GET", "/orders/99999999999999999999", None, 400, "'order_id' must be a positive integer."),
    ("GET", "/orders/9223372036854775807", None, 404, "Order 9223372036854775807 not found."),
    ("PUT", "/orders", {}, 405, "Method PUT not allowed on /orders."),
])
async def test_bad_requests_get_a_4xx_envelope(order_service, method, path, body, code, message):
    assert await request(order_service.port, method, path, body) == (code, {"status": "Fail", "message": message})


@pytest.mark.gen_test(timeout=30)
async def test_oversize_or_non_json_bodies_are_rejected_and_write_nothing(order_service, user_id):
    code, body = await request(order_service.port, "POST", "/orders", raw="x" * 70000)
    assert (code, body["status"]) == (413, "Fail")
    code, body = await request(order_service.port, "POST", "/orders", raw=f"user_id={user_id}&amount=1",
                               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert (code, body["message"]) == (400, "Content-Type must be application/json.")
    _, listed = await request(order_service.port, "GET", f"/orders?user={user_id}")
    assert listed["orders"] == []


@pytest.mark.gen_test(timeout=30)
async def test_outbox_row_is_published_then_waits_for_its_resend_delay(order_service, user_id):
    order_id = (await place(order_service, user_id))["order_id"]

    async def published_once():
        assert await outbox_row(order_service, order_id) == (1,)
    await eventually(published_once)


@pytest.mark.gen_test(timeout=30)
async def test_repeated_or_late_confirmation_changes_nothing(order_service, user_id):
    order_id = (await place(order_service, user_id))["order_id"]
    for status in ("FINISHED", "FINISHED", "CANCELLED"):
        result = PaymentResult(order_id, status).encode()
        await order_service.broker.publisher.publish(PAYMENT_RESULTS, result, order_id)

    async def finished_and_outbox_cleared():
        _, body = await request(order_service.port, "GET", f"/orders/{order_id}")
        assert body["order"]["status"] == "FINISHED"
        assert await outbox_row(order_service, order_id) is None
    await eventually(finished_and_outbox_cleared)


@pytest.mark.gen_test(timeout=30)
async def test_retried_order_with_same_idempotency_key_is_created_once(order_service, user_id):
    key = {"Idempotency-Key": f"order-{user_id}"}
    body = {"user_id": user_id, "amount": 5, "description": "retry me"}
    first = await request(order_service.port, "POST", "/orders", body, headers=key)
    again = await request(order_service.port, "POST", "/orders", body, headers=key)
    assert first[0] == again[0] == 201 and first[1] == again[1]
    _, listed = await request(order_service.port, "GET", f"/orders?user={user_id}")
    assert len(listed["orders"]) == 1
    code, reused = await request(order_service.port, "POST", "/orders", {**body, "amount": 6}, headers=key)
    assert (code, reused["status"]) == (422, "Fail") and "already used" in reused["message"]


@pytest.mark.gen_test(timeout=30)
async def test_malformed_idempotency_key_is_rejected(order_service, user_id):
    code, body = await request(order_service.port, "POST", "/orders", {"user_id": user_id, "amount": 1},
                               headers={"Idempotency-Key": "x" * 300})
    assert (code, body["message"]) == (400, "'Idempotency-Key' must be 1 to 255 printable ASCII characters.")


async def metrics(service):
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{service.admin_server.port}/metrics")
    return response.body.decode()


@pytest.mark.gen_test(timeout=30)
async def test_metrics_count_requests_and_report_the_outbox_backlog(order_service, user_id):
    # The counters are the process's, shared by every in-process test: compare before and after.
    created = dict(name="shop_http_request_duration_seconds_count", handler="OrdersHandler", method="POST",
                   status="201")
    published = dict(name="shop_messages_published_total", queue="outbox_os")
    before = await metrics(order_service)
    await place(order_service, user_id)

    async def counted():
        text = await metrics(order_service)
        assert (sample_total(text, **created) or 0) == (sample_total(before, **created) or 0) + 1
        assert (sample_total(text, **published) or 0) >= (sample_total(before, **published) or 0) + 1
        assert sample_total(text, "shop_pending_rows", table="outbox_os") is not None
    await eventually(counted)


