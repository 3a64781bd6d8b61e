"""Blocking reads end to end, on the real processes: a waiter on one Order Service replica woken by a result the
other applied; waiters across a broker outage and a database outage (woken by reading their orders again); many
clients that leave while waiting; a shutdown that answers every waiter at once; other requests never starved of
the gateway's backend connections. (Authorization before any waiting: tests/e2e/test_authentication.py; the
Order Service's caps and Etags: tests/integration/test_blocking_reads.py; the gateway's rules:
tests/integration/test_gateway_rules.py.)"""
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import pytest

from harness.client import call
from harness.infra import INFRA
from harness.metrics import sample_total, scrape
from harness.proxy import TcpProxy
from harness.stack import Stack
from order_svc import repo
from tests.conftest import wait_for
from tests.e2e.test_replicas import metric_total

USER = 7


def timed_call(url, path, method="GET", body=None, headers=None):
    """(status, body, seconds taken) of one request that may be held up to 30 s."""
    started = time.monotonic()
    code, reply = call(url, method, path, body, timeout=45, headers=headers)
    return code, reply, time.monotonic() - started


def in_background(function, *args, **kwargs):
    """Start `function(*args)` in a thread; the returned getter waits for its result."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(function, *args, **kwargs)
    pool.shutdown(wait=False)
    return future.result


def gauge(process, name="shop_waiting_requests"):
    return sample_total(scrape(process), name) or 0


def until_waiting(process, count, timeout=15):
    def check():
        assert gauge(process) == count
    wait_for(check, timeout)


def funded_orders(stack, count=1, amount=10):
    """`count` NEW orders of `USER`, whose account covers them; Payments is stopped first, so they stay NEW."""
    call(stack.url, "POST", "/payments", {"user_id": USER})
    assert call(stack.url, "PUT", f"/payments/{USER}", {"amount": 1000})[0] == 200
    for name in [n for n in stack.processes if n.startswith("payment")]:
        stack[name].stop()
    orders = []
    for _ in range(count):
        code, body = call(stack.url, "POST", "/orders", {"user_id": USER, "amount": amount})
        assert code == 201 and body["order"]["status"] == "NEW"
        orders.append(body["order_id"])
    return orders


def funded_order(stack):
    return funded_orders(stack)[0]


def direct_url(process):
    return process.health_url.removesuffix("/health")


def test_a_waiter_on_one_replica_is_woken_by_a_result_applied_on_the_other():
    with Stack(prefix="shop_e2e", replicas=2) as stack:
        orders = funded_orders(stack, 4)
        replicas = [stack["order"], stack["order1"]]
        # Each order waited for on both replicas' own ports: whichever applies its result, the other's waiter
        # can learn of it only from the NOTIFY.
        waiting = [in_background(timed_call, direct_url(replica), f"/orders/{order_id}?wait=30")
                   for order_id in orders for replica in replicas]
        for replica in replicas:
            until_waiting(replica, len(orders))
        stack.restart("payment")
        settled_from = time.monotonic()
        answers = [result() for result in waiting]
        assert [(code, body["order"]["status"]) for code, body, _ in answers] == [(200, "FINISHED")] * 8
        assert time.monotonic() - settled_from < 10  # long before the 30 s wait: nothing timed out
        applied = [metric_total(r, "shop_entries_consumed_total", queue="outbox_ps") for r in replicas]
        woken = [{by: metric_total(r, "shop_wait_wakeups_total", by=by) for by in ("local", "notification")}
                 for r in replicas]
        assert sum(applied) == len(orders)
        # A replica's waiters for the orders the other applied could learn of them only by NOTIFY; its own
        # results wake its waiters at once, or by NOTIFY where that arrived first (it listens too).
        for this, other in ((0, 1), (1, 0)):
            assert sum(woken[this].values()) == len(orders), (applied, woken)
            assert woken[this]["notification"] >= applied[other] and woken[this]["local"] <= applied[this], \
                (applied, woken)


@pytest.fixture
def proxied():
    """A stack whose Order Service reaches PostgreSQL and RabbitMQ through proxies the test cuts."""
    postgres, rabbitmq = TcpProxy(INFRA.pg_port).up(), TcpProxy(INFRA.amqp_port).up()
    stack = Stack(prefix="shop_e2e")
    env = stack["order"].env
    env["ORDER_DB_DSN"] = env["ORDER_DB_DSN"].replace(f":{INFRA.pg_port}/", f":{postgres.port}/")
    env["RABBITMQ_URL"] = env["RABBITMQ_URL"].replace(f":{INFRA.amqp_port}/", f":{rabbitmq.port}/")
    try:
        with stack:
            yield stack, postgres, rabbitmq
    finally:
        postgres.down()
        rabbitmq.down()


def test_a_waiter_outlasts_a_broker_outage_and_is_answered_when_the_result_arrives(proxied):
    stack, _, rabbitmq = proxied
    order_id = funded_order(stack)
    waiting = in_background(timed_call, stack.url, f"/orders/{order_id}?wait=30")
    until_waiting(stack["order"], 1)
    rabbitmq.down()
    stack.restart("payment")  # settles the order; its result waits in the queue for the Order Service
    time.sleep(2)
    assert gauge(stack["order"]) == 1
    restored = time.monotonic()
    rabbitmq.up()
    code, body, took = waiting()
    assert (code, body["order"]["status"]) == (200, "FINISHED") and took < 30
    assert time.monotonic() - restored < 15


def test_a_waiter_outlasts_a_database_outage_and_is_woken_by_reading_its_order_again(proxied):
    stack, postgres, _ = proxied
    order_id = funded_order(stack)
    waiting = in_background(timed_call, stack.url, f"/orders/{order_id}?wait=30")
    until_waiting(stack["order"], 1)
    postgres.down()  # every connection of the Order Service reset: the LISTEN connection too
    wait_for(lambda: assert_gauge(stack["order"], "shop_listen_connected", 0), timeout=10)
    # Meanwhile the order becomes final, as another replica would make it (its NOTIFY reaches no one here).
    with psycopg2.connect(INFRA.dsn(stack.order_db)) as conn, conn.cursor() as cur:
        cur.execute(repo.FINALIZE_ORDERS.sql, {**repo.FINALIZE_ORDERS.defaults, "order_ids": [order_id],
                                               "statuses": ["FINISHED"]})
    conn.close()
    time.sleep(1)
    postgres.up()
    code, body, took = waiting()
    assert (code, body["order"]["status"]) == (200, "FINISHED") and took < 30
    assert metric_total(stack["order"], "shop_wait_wakeups_total", by="reread") == 1
    assert gauge(stack["order"], "shop_listen_connects_total") >= 2


def assert_gauge(process, name, value):
    assert gauge(process, name) == value


def test_many_clients_that_leave_while_waiting_leave_no_waiter_and_no_task_behind():
    with Stack(prefix="shop_e2e", extra_env={"MAX_WAITING_PER_USER": "1000"}) as stack:
        order_id = funded_order(stack)
        host, port = stack.url.split("//")[1].split(":")
        processes = (stack["gateway"], stack["order"])
        tasks = [gauge(p, "shop_event_loop_tasks") for p in processes]
        for _ in range(2):
            clients = []
            for _ in range(400):
                client = socket.create_connection((host, int(port)))
                client.sendall(f"GET /orders/{order_id}?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                clients.append(client)
            for process in processes:
                until_waiting(process, 400)
            for client in clients:
                client.close()
            for process in processes:
                until_waiting(process, 0, timeout=10)
        assert metric_total(stack["order"], "shop_waits_ended_total", outcome="client_left") == 800
        # The loops hold what they held before (a few tasks come and go: a scrape, a relay step).
        assert [gauge(p, "shop_event_loop_tasks") for p in processes] <= [t + 3 for t in tasks]


def test_shutdown_answers_every_waiter_at_once_and_exits_cleanly(own_stack):
    order_id = funded_order(own_stack)
    waiting = [in_background(timed_call, own_stack.url, f"/orders/{order_id}?wait=30") for _ in range(10)]
    until_waiting(own_stack["order"], 10)
    signalled = time.monotonic()
    own_stack["order"].popen.send_signal(signal.SIGTERM)
    answers = [result() for result in waiting]
    assert [(code, body["order"]["status"]) for code, body, _ in answers] == [(200, "NEW")] * 10
    assert time.monotonic() - signalled < 4  # well inside the drain's 8 s: nobody was cut off
    assert own_stack["order"].popen.wait(timeout=20) == 0


def test_waits_never_take_the_connections_other_requests_need():
    with Stack(prefix="shop_e2e", extra_env={"BACKEND_POOL_SIZE": "1", "MAX_WAITING_PER_USER": "100"}) as stack:
        order_id = funded_order(stack)
        waiting = [in_background(timed_call, stack.url, f"/orders/{order_id}?wait=30") for _ in range(30)]
        until_waiting(stack["order"], 30)
        for method, path, body in (("GET", f"/orders/{order_id}", None), ("GET", f"/orders?user={USER}", None),
                                   ("POST", "/orders", {"user_id": USER, "amount": 1}),
                                   ("GET", f"/orders/{order_id}?wait=31", None)):
            code, reply, took = timed_call(stack.url, path, method, body)
            assert code in (200, 201, 400) and took < 2, (method, path, code, reply, took)
        assert reply == {"status": "Fail", "message": "'wait' must be whole seconds from 1 to 30."}
        stack["order"].signal(signal.SIGTERM)  # lets the waits go
        assert all(result()[0] == 200 for result in waiting)

