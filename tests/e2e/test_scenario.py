"""The seed's Postman walk-through and the contract's invariants, through the gateway."""
import json
import secrets
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

from harness.client import call
from harness.invariants import check_invariants, wait_until_settled
from tests.conftest import wait_for


def new_user():
    return secrets.randbelow(2**40) + 1


def test_demo_scenario_first_order_finishes_second_is_cancelled(stack):
    api = lambda *a, **k: call(stack.url, *a, **k)  # noqa: E731
    user = new_user()
    assert api("POST", "/payments", {"user_id": user}) == \
        (201, {"status": "Success", "message": "Account created.", "account": {"user_id": user, "balance": 0}})
    assert api("POST", "/payments", {"user_id": user}) == \
        (409, {"status": "Fail", "message": f"Account for user {user} already exists."})
    code, body = api("PUT", f"/payments/{user}", {"amount": 1000})
    assert (code, body["account"]["balance"]) == (200, Decimal(1000))
    code, body = api("GET", f"/payments/{user}")
    assert (code, body["account"]["balance"]) == (200, Decimal(1000))

    placed = [api("POST", "/orders", {"user_id": user, "amount": 1000, "description": "User Order"})
              for _ in range(2)]
    assert [(code, body["order"]["status"]) for code, body in placed] == [(201, "NEW"), (201, "NEW")]
    first, second = (body["order_id"] for _, body in placed)
    assert first < second

    def statuses():
        got = {oid: api("GET", f"/orders/{oid}")[1]["order"]["status"] for oid in (first, second)}
        assert got == {first: "FINISHED", second: "CANCELLED"}
    wait_for(statuses, timeout=10)
    assert api("GET", f"/payments/{user}")[1]["account"]["balance"] == 0

    code, mine = api("GET", f"/orders?user={user}")
    assert code == 200 and [o["order_id"] for o in mine["orders"]] == [first, second]
    code, everyone = api("GET", "/orders?user=")
    assert code == 200 and {first, second} <= {o["order_id"] for o in everyone["orders"]}
    assert api("GET", f"/orders/{first}")[1]["message"] == f"Order {first} is FINISHED."


def test_gateway_passes_backend_errors_through_and_answers_unknown_routes(stack):
    assert call(stack.url, "GET", "/orders/abc") == (400, {"status": "Fail",
                                                           "message": "'order_id' must be a positive integer."})
    assert call(stack.url, "GET", "/nope") == (404, {"status": "Fail", "message": "No route for /nope."})
    assert call(stack.url, "DELETE", "/orders/1") == (405, {"status": "Fail",
                                                            "message": "Method DELETE not allowed on /orders/1."})
    assert call(stack.url, "POST", "/orders", b"{oops")[0] == 400


def test_fifty_concurrent_orders_never_overdraw_and_conserve_money(own_stack):
    stack = own_stack
    user = new_user()
    call(stack.url, "POST", "/payments", {"user_id": user})
    call(stack.url, "PUT", f"/payments/{user}", {"amount": "250.00"})
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: call(stack.url, "POST", "/orders", {"user_id": user, "amount": "10.00"}),
                                range(50)))
    assert all(code == 201 for code, _ in replies)
    assert wait_until_settled(stack.order_dsn, timeout=20, payment_db=stack.payment_dsn) is not None
    report = check_invariants(stack.order_dsn, stack.payment_dsn, top_ups={user: Decimal("250.00")},
                              created_order_ids=[body["order_id"] for _, body in replies])
    assert report.ok, report.table()
    _, orders = call(stack.url, "GET", f"/orders?user={user}")
    assert sorted(o["status"] for o in orders["orders"]).count("FINISHED") == 25


def test_gateway_names_each_request_and_reports_readiness_and_metrics_on_its_admin_port_only(stack):

    with urllib.request.urlopen(stack.url + "/orders?limit=1") as response:
        assert len(response.headers["X-Request-ID"]) == 32
    request = urllib.request.Request(stack.url + "/orders", json.dumps({"user_id": new_user(), "amount": 1}).encode(),
                                     {"Content-Type": "application/json", "X-Request-ID": "trace-me-42"})
    with urllib.request.urlopen(request) as response:
        placed, named = json.load(response), response.headers["X-Request-ID"]
        # The gateway names the request (the client's id could be anything, a colleague's too); it keeps the
        # client's own id beside its own.
        assert (len(named), response.headers["X-Client-Request-ID"]) == (32, "trace-me-42")
    assert f"[{named}]: order_id={placed['order_id']} placed" in stack["order"].log()
    # Readiness and metrics are the admin port's: the public port has neither.
    code, ready = call(stack["gateway"].admin_url, "GET", "/ready")
    assert code == 200 and set(ready["backends"].values()) == {"ready"}
    with urllib.request.urlopen(stack["gateway"].admin_url + "/metrics") as response:
        assert b'shop_http_request_duration_seconds_count{handler="ProxyHandler"' in response.read()
    assert [call(stack.url, "GET", path)[0] for path in ("/ready", "/metrics")] == [404, 404]
