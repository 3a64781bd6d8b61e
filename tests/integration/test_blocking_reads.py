"""Blocking reads against the in-process Order Service (its real database; Payments only where a test names it):
`GET /orders/{id}?wait=N` and `POST /orders` with `Prefer: wait=N` answer as soon as the order is final, woken by
the NOTIFY of the statement that made it final; Etags, caps, idempotent replays, clients that leave, shutdown, and
a LISTEN connection that is cut or falls silent."""
import asyncio
import json
import time
from dataclasses import replace

import psycopg2
import pytest
from prometheus_client import REGISTRY
from tornado.httpclient import AsyncHTTPClient
from tornado.tcpclient import TCPClient

from common.broker.messages import OrderStatus, PaymentResult
from common.runtime.config import load_settings
from harness.infra import INFRA
from harness.proxy import TcpProxy
from order_svc import repo
from order_svc import service as order_service
from order_svc.bootstrap import OrderService
from order_svc.waiters import Waiters
from tests.conftest import eventually
from tests.integration.conftest import own_run_env, running, stopped
from tests.integration.http import request


@pytest.fixture(scope="module")
def run_env():
    """Databases and a vhost of this module's own: its orders' payment requests wait in `outbox_os` (no Payments
    Service takes most of them), and must not reach another module's Payments Service."""
    with own_run_env("shop_it_bw") as env:
        yield env


def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0


async def get(service, path, headers=None):
    """(status, JSON body or None, headers, seconds taken)."""
    started = time.monotonic()
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{service.port}{path}", raise_error=False,
                                             headers=headers or {}, request_timeout=40)
    body = json.loads(response.body) if response.body else None
    return response.code, body, response.headers, time.monotonic() - started


async def place(service, user_id, headers=None):
    started = time.monotonic()
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{service.port}/orders", method="POST", raise_error=False, request_timeout=40,
        body=json.dumps({"user_id": user_id, "amount": 10}), headers={"Content-Type": "application/json",
                                                                      **(headers or {})})
    return response.code, json.loads(response.body), response.headers, time.monotonic() - started


async def finalize(service, order_id, status=OrderStatus.FINISHED):
    """The order's payment result, applied as the consumer applies it (the statement that NOTIFYs)."""
    # As another replica applies it: this process's waiters learn of it by the NOTIFY.
    results = [PaymentResult(order_id, status)]
    assert await order_service.apply_payment_results(service.db.background, repo.PostgresOrders(), Waiters(0, 0),
                                                     results) == {}


async def new_order(service, user_id):
    code, body, _, _ = await place(service, user_id)
    assert code == 201 and body["order"]["status"] == "NEW"
    return body["order_id"]


@pytest.fixture(autouse=True)
def waiting_before():
    """The process-wide gauge's value before the test (other tests in this process may have moved it)."""
    waiting_before.value = sample("shop_waiting_requests")


async def until_waiting(count, timeout=10):
    async def check():
        assert sample("shop_waiting_requests") - waiting_before.value == count
    await eventually(check, timeout)


@pytest.fixture
def capped_service(io_loop, settings):
    service = running(io_loop, OrderService(replace(settings, max_waiting=2, max_waiting_per_user=1)))
    yield service
    stopped(io_loop, service)


@pytest.mark.gen_test(timeout=30)
async def test_a_waiting_read_is_answered_as_soon_as_its_order_is_final(order_service, user_id):
    order_id = await new_order(order_service, user_id)
    waiting = asyncio.ensure_future(get(order_service, f"/orders/{order_id}?wait=20"))
    await until_waiting(1)
    woken = sample("shop_wait_wakeups_total", by="notification")
    finalized_at = time.monotonic()
    await finalize(order_service, order_id)
    code, body, _, _ = await waiting
    assert (code, body["order"]["status"], body["message"]) == (200, "FINISHED", f"Order {order_id} is FINISHED.")
    assert time.monotonic() - finalized_at < 1
    assert sample("shop_wait_wakeups_total", by="notification") == woken + 1
    assert sample("shop_waiting_requests") == waiting_before.value
    # Final already: at once.
    code, body, _, took = await get(order_service, f"/orders/{order_id}?wait=20")
    assert (code, body["order"]["status"]) == (200, "FINISHED") and took < 1


@pytest.mark.gen_test(timeout=30)
async def test_without_an_outcome_the_current_state_comes_after_the_wait(order_service, user_id):
    order_id = await new_order(order_service, user_id)
    code, body, _, took = await get(order_service, f"/orders/{order_id}?wait=1")
    assert (code, body["order"]["status"]) == (200, "NEW") and 1 <= took < 2.5


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("query", ["wait=0", "wait=31", "wait=abc", "wait=1.5", "wait=", "wait=-1", "wait=1&wait=2",
                                   "wait=%EF%BC%91"])
async def test_a_bad_wait_is_a_400_envelope(order_service, query):
    code, body, _, took = await get(order_service, f"/orders/1?{query}")
    assert (code, body) == (400, {"status": "Fail", "message": "'wait' must be whole seconds from 1 to 30."})


@pytest.mark.gen_test(timeout=30)
async def test_if_none_match_waits_for_another_representation_and_else_answers_304(order_service, user_id):
    order_id = await new_order(order_service, user_id)
    _, _, plain, _ = await get(order_service, f"/orders/{order_id}")
    new_etag = plain["Etag"]
    # Nothing else came within the wait: 304, without a body.
    code, body, _, took = await get(order_service, f"/orders/{order_id}?wait=1", {"If-None-Match": new_etag})
    assert (code, body) == (304, None) and 1 <= took < 2.5
    # The client lacks this representation (its Etag is another): it is the answer, at once.
    code, body, headers, took = await get(order_service, f"/orders/{order_id}?wait=20", {"If-None-Match": '"x"'})
    assert (code, body["order"]["status"], headers["Etag"]) == (200, "NEW", new_etag) and took < 1
    # A new representation comes: it is the answer, with its own Etag.
    waiting = asyncio.ensure_future(get(order_service, f"/orders/{order_id}?wait=20", {"If-None-Match": new_etag}))
    await until_waiting(1)
    await finalize(order_service, order_id, OrderStatus.CANCELLED)
    code, body, headers, took = await waiting
    assert (code, body["order"]["status"]) == (200, "CANCELLED") and headers["Etag"] != new_etag and took < 5
    # Final and already held by the client: 304 at once.
    code, _, _, took = await get(order_service, f"/orders/{order_id}?wait=20", {"If-None-Match": headers["Etag"]})
    assert code == 304 and took < 1


@pytest.mark.gen_test(timeout=40)
async def test_beyond_each_cap_the_current_state_comes_at_once(capped_service, user_id):
    users = [user_id, user_id + 1, user_id + 2]
    orders = [await new_order(capped_service, user) for user in (users[0], users[0], users[1], users[2])]
    refused = {cap: sample("shop_waits_refused_total", cap=cap) for cap in ("user", "process")}
    first = asyncio.ensure_future(get(capped_service, f"/orders/{orders[0]}?wait=20"))
    await until_waiting(1)
    # The same user again (MAX_WAITING_PER_USER=1): at once, never an error.
    code, body, _, took = await get(capped_service, f"/orders/{orders[1]}?wait=20")
    assert (code, body["order"]["status"]) == (200, "NEW") and took < 1
    second = asyncio.ensure_future(get(capped_service, f"/orders/{orders[2]}?wait=20"))
    await until_waiting(2)
    # A third user, with two waiting in all (MAX_WAITING=2): at once too; a POST's Prefer likewise.
    code, body, _, took = await get(capped_service, f"/orders/{orders[3]}?wait=20")
    assert (code, body["order"]["status"]) == (200, "NEW") and took < 1
    code, body, headers, took = await place(capped_service, users[2], {"Prefer": "wait=20"})
    assert (code, body["order"]["status"], "Preference-Applied" in headers, took < 1) == (201, "NEW", False, True)
    assert sample("shop_waits_refused_total", cap="user") == refused["user"] + 1
    assert sample("shop_waits_refused_total", cap="process") == refused["process"] + 2
    for order_id in orders[0], orders[2]:
        await finalize(capped_service, order_id)
    assert [(await w)[1]["order"]["status"] for w in (first, second)] == ["FINISHED", "FINISHED"]


@pytest.mark.gen_test(timeout=40)
async def test_prefer_wait_answers_the_final_status_when_payment_settles_in_time(order_service, payment_service,
                                                                                 user_id):
    assert (await request(payment_service.port, "POST", "/payments", {"user_id": user_id}))[0] == 201
    assert (await request(payment_service.port, "PUT", f"/payments/{user_id}", {"amount": 10}))[0] == 200
    local = sample("shop_wait_wakeups_total", by="local")
    code, body, headers, took = await place(order_service, user_id, {"Prefer": "respond-async, wait=10"})
    # FINISHED, not NEW: the answer came once the payment settled, within the 10 s asked for.
    assert (code, body["order"]["status"], headers["Preference-Applied"]) == (201, "FINISHED", "wait=10")
    # Woken by this process itself (it applied the result), unless the payment settled before the wait began: the
    # final status was then read at once.
    assert sample("shop_wait_wakeups_total", by="local") in (local, local + 1)
    # The balance is spent: the next one ends CANCELLED, and a wait above 30 s is taken as 30.
    code, body, headers, _ = await place(order_service, user_id, {"Prefer": "wait=100"})
    assert (code, body["order"]["status"], headers["Preference-Applied"]) == (201, "CANCELLED", "wait=30")


@pytest.mark.gen_test(timeout=40)
@pytest.mark.parametrize("prefer", ["wait=abc", "respond-async", "wait=0", "wait", "wait=-3", "return=minimal",
                                    ";;,=", "wait=5.5"])
async def test_a_preference_that_cannot_be_honoured_is_ignored(order_service, user_id, prefer):
    code, body, headers, took = await place(order_service, user_id, {"Prefer": prefer})
    assert (code, body["order"]["status"], "Preference-Applied" in headers) == (201, "NEW", False) and took < 1


@pytest.mark.gen_test(timeout=40)
async def test_prefer_wait_without_an_outcome_answers_new_after_the_wait(order_service, user_id):
    code, body, headers, took = await place(order_service, user_id, {"Prefer": "wait=1"})
    assert (code, body["order"]["status"], headers["Preference-Applied"]) == (201, "NEW", "wait=1")
    assert 1 <= took < 2.5


@pytest.mark.gen_test(timeout=40)
async def test_a_replayed_idempotency_key_answers_as_its_first_answer_did(order_service, user_id):
    # First answer NEW (nothing settles it within the wait): its replays say NEW, even once it is final.
    key = {"Idempotency-Key": f"bw-{user_id}-1", "Prefer": "wait=1"}
    code, first, headers, _ = await place(order_service, user_id, key)
    assert (code, first["order"]["status"], headers["Preference-Applied"]) == (201, "NEW", "wait=1")
    await finalize(order_service, first["order_id"])
    code, again, headers, took = await place(order_service, user_id, key)
    assert (code, again, "Preference-Applied" in headers) == (201, first, False) and took < 1
    # First answer final: so are its replays, with or without a Prefer.
    key = {"Idempotency-Key": f"bw-{user_id}-2", "Prefer": "wait=20"}
    placing = asyncio.ensure_future(place(order_service, user_id, key))
    await until_waiting(1)
    [order_id] = [o for o in await order_ids(order_service, user_id) if o != first["order_id"]]
    await finalize(order_service, order_id, OrderStatus.CANCELLED)
    code, first, _, _ = await placing
    assert (code, first["order"]["status"]) == (201, "CANCELLED")
    for headers in key, {"Idempotency-Key": key["Idempotency-Key"]}:
        code, again, _, took = await place(order_service, user_id, headers)
        assert (code, again) == (201, first) and took < 1


async def order_ids(service, user_id):
    code, body = await request(service.port, "GET", f"/orders?user={user_id}")
    return [o["order_id"] for o in body["orders"]]


@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_leaves_leaves_no_waiter_behind(order_service, user_id):
    order_id = await new_order(order_service, user_id)
    left = sample("shop_waits_ended_total", outcome="client_left")
    streams = []
    for _ in range(20):
        stream = await TCPClient().connect("127.0.0.1", order_service.port)
        await stream.write(f"GET /orders/{order_id}?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        streams.append(stream)
    await until_waiting(20)
    for stream in streams:
        stream.close()
    await until_waiting(0, timeout=5)
    assert sample("shop_waits_ended_total", outcome="client_left") == left + 20


@pytest.mark.gen_test(timeout=40)
async def test_shutdown_answers_every_waiter_at_once(settings, user_id):
    service = OrderService(settings)
    await service.start()
    order_id = await new_order(service, user_id)
    waiting = [asyncio.ensure_future(get(service, f"/orders/{order_id}?wait=30")) for _ in range(5)]
    await until_waiting(5)
    started = time.monotonic()
    await service.stop()
    answers = await asyncio.gather(*waiting)
    assert [(code, body["order"]["status"]) for code, body, _, _ in answers] == [(200, "NEW")] * 5
    assert time.monotonic() - started < 3  # far below the drain's 8 s: nobody was cut off


@pytest.fixture
def proxied_service(io_loop, run_env):
    """The Order Service with its database (pools and LISTEN connection) behind a proxy the test cuts."""
    proxy = TcpProxy(INFRA.pg_port).up()
    env = {**run_env, "ORDER_SVC_PORT": "0", "PAYMENT_SVC_PORT": "0"}
    env["ORDER_DB_DSN"] = env["ORDER_DB_DSN"].replace(f":{INFRA.pg_port}/", f":{proxy.port}/")
    service = running(io_loop, OrderService(load_settings(env)))
    yield service, proxy, run_env["ORDER_DB_DSN"]
    stopped(io_loop, service)
    proxy.down()


def finalize_directly(dsn, order_id):
    """What another replica's consumer would do, on a connection of the test's own."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(repo.FINALIZE_ORDERS.sql, {**repo.FINALIZE_ORDERS.defaults, "order_ids": [order_id],
                                               "statuses": ["FINISHED"]})
    conn.close()


async def until_listening(up, timeout):
    async def check():
        assert sample("shop_listen_connected") == (1 if up else 0)
    await eventually(check, timeout)


@pytest.mark.gen_test(timeout=60)
async def test_a_result_applied_while_the_listen_connection_was_cut_wakes_its_waiter_when_it_is_back(
        proxied_service, user_id):
    service, proxy, dsn = proxied_service
    order_id = await new_order(service, user_id)
    waiting = asyncio.ensure_future(get(service, f"/orders/{order_id}?wait=30"))
    await until_waiting(1)
    reread = sample("shop_wait_wakeups_total", by="reread")
    proxy.down()
    await until_listening(False, 5)
    finalize_directly(dsn, order_id)  # its NOTIFY reaches nobody here
    await asyncio.sleep(0.5)
    assert not waiting.done()
    proxy.up()
    code, body, _, took = await waiting
    assert (code, body["order"]["status"]) == (200, "FINISHED") and took < 20
    assert sample("shop_wait_wakeups_total", by="reread") == reread + 1


@pytest.mark.gen_test(timeout=60)
async def test_a_silent_listen_connection_is_noticed_within_seconds_and_listened_again(proxied_service, user_id):
    service, proxy, dsn = proxied_service
    order_id = await new_order(service, user_id)
    await until_listening(True, 5)
    connects = sample("shop_listen_connects_total")
    waiting = asyncio.ensure_future(get(service, f"/orders/{order_id}?wait=30"))
    await until_waiting(1)
    proxy.pause()  # no reset, no answer: a partition, or a server that hangs
    silent_at = time.monotonic()
    await until_listening(False, 10)
    noticed = time.monotonic() - silent_at
    assert noticed < 7  # a probe every 2 s, answered within 3 s
    finalize_directly(dsn, order_id)
    proxy.resume()
    code, body, _, _ = await waiting
    assert (code, body["order"]["status"]) == (200, "FINISHED")
    assert sample("shop_listen_connects_total") > connects
