"""Who may do what, end to end against the real development issuer (panva's oidc-provider): two users and an
admin on every route through the gateway, the same refusals at each service's own port, forged identity headers,
a key rotation while running, and nothing written by any refused request."""
import json
import secrets
import time
import urllib.error
import urllib.request

import jwt
import psycopg2
import pytest

from tests.conftest import wait_for

# Headers a proxy in front of an application sometimes sets to name the user: none of them is believed here.
FORGED_IDENTITY = {"X-User-Id": "{victim}", "X-Forwarded-User": "user-{victim}", "X-Auth-Request-User": "{victim}",
                   "X-Shop-User-Id": "{victim}", "X-Remote-User": "{victim}", "X-Principal": "shop-admin"}


def send(url, method, path, body=None, token=None, headers=None):
    """(status, JSON body, response headers) of one request."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers={
        "Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {}),
        **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.load(response), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


@pytest.fixture(scope="module")
def stack(authenticated_stack):
    return authenticated_stack


@pytest.fixture(scope="module")
def people(issuer):
    """Two users (tokens with and without shop:topup) and an admin client."""
    a, b = (secrets.randbelow(2**40) + 1 for _ in range(2))
    return dict(a=a, b=b, token_a=issuer.token(a), topup_a=issuer.token(a, topup=True), token_b=issuer.token(b),
                topup_b=issuer.token(b, topup=True), admin=issuer.token(admin=True))


def rows(dsn, sql, *args):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def api_routes(user, order_id):
    return [("POST", "/orders", {"user_id": user, "amount": 1}), ("GET", f"/orders?user={user}", None),
            ("GET", "/orders", None), ("GET", f"/orders/{order_id}", None), ("POST", "/payments", {"user_id": user}),
            ("PUT", f"/payments/{user}", {"amount": 5}), ("GET", f"/payments/{user}", None),
            ("GET", f"/payments/{user}/movements", None)]


def test_every_api_route_refuses_a_missing_or_invalid_token_with_rfc_6750_401s_and_writes_nothing(stack, people):
    b = people["b"]
    for token, challenge in ((None, "Bearer"), ("not-a-token", 'Bearer error="invalid_token"')):
        for method, path, body in api_routes(b, 1):
            status, reply, headers = send(stack.url, method, path, body, token)
            assert (status, reply["status"], headers["WWW-Authenticate"]) == (401, "Fail", challenge), (method, path)
    for public in ("/health", "/openapi.yaml"):
        with urllib.request.urlopen(stack.url + public) as response:
            assert response.status == 200
    assert rows(stack.order_dsn, "SELECT count(*) FROM orders WHERE user_id = %s", b) == [(0,)]
    assert rows(stack.payment_dsn, "SELECT count(*) FROM accounts WHERE user_id = %s", b) == [(0,)]


def test_a_user_acts_for_itself_only_and_another_user_s_order_is_an_unknown_one(stack, people):
    url, a, b = stack.url, people["a"], people["b"]
    assert send(url, "POST", "/payments", {"user_id": b}, people["token_a"])[0] == 403
    assert send(url, "POST", "/payments", {"user_id": a}, people["token_a"])[0] == 201
    assert send(url, "POST", "/payments", {"user_id": b}, people["token_b"])[0] == 201
    # A top-up creates money: the user's own, and only with shop:topup.
    status, reply, headers = send(url, "PUT", f"/payments/{a}", {"amount": 100}, people["token_a"])
    assert (status, reply["message"], headers["WWW-Authenticate"]) == \
        (403, "Topping up needs the scope shop:topup.", 'Bearer error="insufficient_scope", scope="shop:topup"')
    assert send(url, "PUT", f"/payments/{b}", {"amount": 100}, people["topup_a"])[0] == 403
    assert send(url, "PUT", f"/payments/{a}", {"amount": 100}, people["topup_a"])[1]["account"]["balance"] == 100
    assert send(url, "PUT", f"/payments/{b}", {"amount": 7}, people["admin"])[1]["account"]["balance"] == 7
    for path in (f"/payments/{b}", f"/payments/{b}/movements", f"/orders?user={b}"):
        assert send(url, "GET", path, token=people["token_a"])[0] == 403, path
        assert send(url, "GET", path, token=people["token_b"])[0] == 200, path
        assert send(url, "GET", path, token=people["admin"])[0] == 200, path
    assert send(url, "POST", "/orders", {"user_id": b, "amount": 1}, people["token_a"])[0] == 403
    status, placed, _ = send(url, "POST", "/orders", {"user_id": a, "amount": 1}, people["token_a"])
    assert status == 201
    order_id = placed["order_id"]
    unknown = send(url, "GET", "/orders/999999999999", token=people["token_b"])
    foreign = send(url, "GET", f"/orders/{order_id}", token=people["token_b"])
    assert (foreign[0], foreign[1]) == (404, {"status": "Fail", "message": f"Order {order_id} not found."})
    assert (unknown[0], unknown[1]["message"]) == (404, "Order 999999999999 not found.")
    assert send(url, "GET", f"/orders/{order_id}", token=people["token_a"])[0] == 200
    assert send(url, "GET", f"/orders/{order_id}", token=people["admin"])[0] == 200
    # Without `user`: a user's own orders, an admin's everyone's.
    own = send(url, "GET", "/orders", token=people["token_b"])[1]["orders"]
    assert own == [] and order_id in [o["order_id"] for o in send(url, "GET", "/orders?limit=1000",
                                                                    token=people["admin"])[1]["orders"]]
    assert [o["order_id"] for o in send(url, "GET", "/orders", token=people["token_a"])[1]["orders"]] == [order_id]
    # Nothing the refusals asked for was written: B has no order, and only the admin's credit.
    assert rows(stack.order_dsn, "SELECT count(*) FROM orders WHERE user_id = %s", b) == [(0,)]
    assert rows(stack.payment_dsn, "SELECT kind, amount, principal FROM account_movements WHERE user_id = %s "
                "ORDER BY id", b) == [("credit", 7, "shop-admin")]
    assert rows(stack.payment_dsn, "SELECT principal FROM account_movements WHERE user_id = %s AND kind = 'credit'",
                a) == [(f"user-{a}",)]


def test_an_idempotency_key_is_the_caller_s_own(stack, people):
    url, a, b = stack.url, people["a"], people["b"]
    key = {"Idempotency-Key": f"shared-{secrets.token_hex(4)}"}
    first = send(url, "POST", "/orders", {"user_id": b, "amount": 2}, people["token_b"], key)
    # The same key from another caller, with another body: its own first use, neither a 422 nor B's order.
    other = send(url, "POST", "/orders", {"user_id": a, "amount": 3}, people["token_a"], key)
    again = send(url, "POST", "/orders", {"user_id": b, "amount": 2}, people["token_b"], key)
    assert (first[0], other[0], again[0]) == (201, 201, 201)
    assert first[1]["order_id"] == again[1]["order_id"] != other[1]["order_id"]
    assert other[1]["order"]["user_id"] == a


def test_a_service_s_own_port_grants_nothing_the_gateway_would_not_and_believes_no_identity_header(stack, people):
    b = people["b"]
    order_of_b = send(stack.url, "POST", "/orders", {"user_id": b, "amount": 1}, people["token_b"])[1]["order_id"]
    before = rows(stack.order_dsn, "SELECT count(*) FROM orders WHERE user_id = %s", b)
    forged = {header: value.format(victim=b) for header, value in FORGED_IDENTITY.items()}
    for name, prefix in (("order", "/orders"), ("payment", "/payments")):
        direct = stack[name].health_url.removesuffix("/health")
        for method, path, body in api_routes(b, order_of_b):
            if not path.startswith(prefix):
                continue
            assert send(direct, method, path, body, headers=forged)[0] == 401, (name, method, path)
            if path != "/orders":  # GET /orders without `user` is A's own list: allowed, and A's alone
                expected = 404 if path == f"/orders/{order_of_b}" else 403
                assert send(direct, method, path, body, people["token_a"], forged)[0] == expected, (name, path)
    assert rows(stack.order_dsn, "SELECT count(*) FROM orders WHERE user_id = %s", b) == before


def test_a_key_rotated_at_the_issuer_is_taken_without_a_restart_and_old_tokens_still_verify(stack, issuer, people):
    old = issuer.token(people["a"], topup=True)
    issuer.rotate()
    new = issuer.token(people["a"])  # the cache went with the restart
    assert kid_of(new) != kid_of(old)

    def accepted():
        assert send(stack.url, "GET", f"/payments/{people['a']}", token=new)[0] == 200
    wait_for(accepted, timeout=15)  # an unknown kid refetches the keys at most every 10 s
    assert send(stack.url, "GET", f"/payments/{people['a']}", token=old)[0] == 200


def kid_of(token):
    return jwt.get_unverified_header(token)["kid"]


def test_who_may_see_an_order_is_decided_before_any_waiting(stack, people):
    url, a = stack.url, people["a"]
    stack["payment"].stop()  # the order stays NEW: a wait would last its whole 30 s
    try:
        order_id = send(url, "POST", "/orders", {"user_id": a, "amount": 1}, people["token_a"])[1]["order_id"]
        for token, expected in ((people["token_b"], 404), (None, 401), ("not-a-token", 401)):
            started = time.monotonic()
            assert send(url, "GET", f"/orders/{order_id}?wait=30", token=token)[0] == expected, token
            assert time.monotonic() - started < 2, token
        started = time.monotonic()
        refused = send(url, "POST", "/orders", {"user_id": a, "amount": 1}, people["token_b"], {"Prefer": "wait=30"})
        assert refused[0] == 403 and time.monotonic() - started < 2
        status, reply, headers = send(url, "GET", f"/orders/{order_id}?wait=1", token=people["token_a"])
        assert (status, reply["order"]["status"]) == (200, "NEW")
    finally:
        stack.restart("payment")
        stack["payment"].wait_ready()
    status, reply, headers = send(url, "GET", f"/orders/{order_id}?wait=10", token=people["admin"])
    assert status == 200 and reply["order"]["status"] in ("FINISHED", "CANCELLED")
