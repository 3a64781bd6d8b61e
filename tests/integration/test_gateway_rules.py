"""The gateway's forwarding rules with the gateway in this process (so that mutation testing sees them; the same
rules are tested against the real `python gateway.py` in tests/e2e/test_gateway_forwarding.py): through HTTP
only, backends are raw-socket stand-ins (`tests.e2e.raw_backend`), and once the real Order Service (its Etags)."""
import asyncio
import json
import time
from contextlib import contextmanager
from email.utils import parsedate_to_datetime

import pytest
from prometheus_client import REGISTRY
from tornado.httpclient import AsyncHTTPClient
from tornado.httputil import HTTPHeaders
from tornado.tcpclient import TCPClient

from common.observability import tracing
from common.runtime.config import load_settings
from common.web.http_server import listen
from gateway import OPENAPI_SPEC, make_admin_app, make_app
from harness.stack import free_port
from tests.conftest import eventually
from tests.e2e.raw_backend import ANSWER, DROP, ETAG, HOLD, RawBackend


@pytest.fixture
def start_gateway(io_loop):
    """Starts a gateway (its public port's `ProxyServer` and its admin port) on the given backends. Returns the
    public port; `start.admin[port]` is its admin port (the backends' admin URLs are the backends' own)."""
    servers = []

    def start(order_urls, payment_urls=("http://127.0.0.1:9",), client=None, **env):
        port = free_port()
        settings = load_settings({"GATEWAY_PORT": str(port), "ORDER_SVC_URL": ",".join(order_urls),
                                  "PAYMENT_SVC_URL": ",".join(payment_urls), "UPSTREAM_TIMEOUT": "1",
                                  "ORDER_SVC_ADMIN_URL": ",".join(order_urls),
                                  "PAYMENT_SVC_ADMIN_URL": ",".join(payment_urls), **env})
        servers.append(listen(make_app(settings, client), port, "127.0.0.1", settings))
        servers.append(listen(make_admin_app(settings), 0, "127.0.0.1", settings))
        start.admin[port] = servers[-1].port
        return port

    start.admin = {}
    yield start
    for server in servers:
        server.stop()


async def send(port, method, path, body=b'{"user_id": 1, "amount": 1}'):
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{path}", method=method, raise_error=False,
                                             body=body if method in ("POST", "PUT") else None,
                                             headers={"Content-Type": "application/json"}, request_timeout=20)
    return response.code, response.body


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("method, path", [("POST", "/orders"), ("PUT", "/payments/1")])
async def test_a_write_on_a_kept_alive_connection_that_broke_is_a_503_sent_once(start_gateway, method, path):
    backend = RawBackend(lambda _, nth: ANSWER if nth == 1 else DROP)
    port = start_gateway([backend.url], [backend.url])
    assert (await send(port, "GET", "/orders/1" if method == "POST" else "/payments/1"))[0] == 200
    code, _ = await send(port, method, path)
    await asyncio.sleep(0.5)  # room for a resend, had there been one
    assert [(s.method, s.nth) for s in backend.requests(method)] == [(method, 2)]
    assert code == 503


@pytest.mark.gen_test(timeout=30)
async def test_a_refused_replica_is_skipped(start_gateway):
    live = RawBackend()
    port = start_gateway([f"http://127.0.0.1:{free_port()}", live.url])
    codes = [(await send(port, method, "/orders"))[0] for method in ("POST", "GET") * 3]
    assert codes == [200] * 6 and len(live.requests()) == 6


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("failure", [DROP, HOLD])
async def test_a_write_that_reached_a_replica_goes_to_no_other(start_gateway, failure):
    failing, live = RawBackend(lambda *_: failure), RawBackend()
    port = start_gateway([failing.url, live.url])
    codes = [(await send(port, "POST", "/orders"))[0] for _ in range(4)]
    await asyncio.sleep(0.5)
    assert len(failing.requests()) == codes.count(503) == 2, (codes, failing.seen)
    assert len(live.requests()) == codes.count(200) == 2, (codes, live.seen)


@pytest.mark.gen_test(timeout=30)
async def test_only_routed_methods_and_paths_reach_a_backend(start_gateway):
    backend = RawBackend()
    port = start_gateway([backend.url], [backend.url])
    assert (await send(port, "DELETE", "/orders/1"))[0] == 405
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/orders", method="DELETE", raise_error=False)
    assert (response.code, response.headers["Allow"], response.headers["Content-Type"].split(";")[0]) == \
        (405, "GET, HEAD, POST", "application/json")
    for method in ("GET", "POST"):  # a body too goes to the application, which answers every other path
        code, body = await send(port, method, "/nowhere")
        assert (code, json.loads(body)["status"]) == (404, "Fail")  # the envelope, not Tornado's HTML page
    assert (await send(port, "PUT", "/payments/1/movements"))[0] == 405
    assert (await send(port, "GET", "/payments/1/movements?limit=2&cursor=5"))[0] == 200
    assert [(s.method, s.path) for s in backend.requests()] == [("GET", "/payments/1/movements?limit=2&cursor=5")]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("method, path", [("POST", "/orders"), ("PUT", "/payments/7")])
async def test_a_write_is_forwarded_with_its_body_and_headers_and_its_answer_passed_back(start_gateway, method, path):
    backend = RawBackend()
    port = start_gateway([backend.url], [backend.url])
    body = b'{"user_id": 7, "amount": "1.25"}'
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{port}{path}", method=method, body=body, raise_error=False,
        headers={"Content-Type": "application/json", "Idempotency-Key": "key-1", "X-Request-ID": "trace-1",
                 "Authorization": "Bearer a.b.c", "Cookie": "not-forwarded=1"})
    seen = backend.requests(method)[0]
    headers = dict(seen.headers)
    assert (seen.path, seen.body) == (path, body)
    assert (headers["idempotency-key"], headers["x-client-request-id"], headers["content-type"]) == \
        ("key-1", "trace-1", "application/json")
    # The gateway names the request itself; the client's own id rides beside it, both ways.
    assert headers["x-request-id"] == response.headers["X-Request-ID"] != "trace-1"
    assert response.headers["X-Client-Request-ID"] == "trace-1"
    assert headers["authorization"] == "Bearer a.b.c"  # each service verifies the token itself
    assert "cookie" not in headers
    assert (response.code, response.headers["Content-Type"]) == (200, "application/json; charset=raw")
    assert response.body == f'{{"status": "Success", "message": "{method} {path} seen."}}'.encode()


@pytest.mark.gen_test(timeout=30)
async def test_a_read_is_forwarded_with_its_query_and_no_body_and_an_unreachable_backend_is_named(start_gateway):
    backend = RawBackend()
    port = start_gateway([backend.url], [f"http://127.0.0.1:{free_port()}"])
    assert (await send(port, "GET", "/orders?user=7&limit=2"))[0] == 200
    seen = backend.requests("GET")[0]
    assert (seen.path, seen.body, dict(seen.headers).get("content-length")) == ("/orders?user=7&limit=2", b"", None)
    assert await send(port, "GET", "/payments/7") == \
        (503, b'{"status": "Fail", "message": "Payments Service temporarily unavailable."}')


def unavailable(service):
    return 503, f'{{"status": "Fail", "message": "{service} temporarily unavailable."}}'.encode()


@pytest.mark.gen_test(timeout=60)
async def test_a_backend_that_never_answers_is_a_503_naming_it_once_the_upstream_timeout_passed(start_gateway):
    held = RawBackend(lambda *_: HOLD)
    port = start_gateway([held.url], [held.url])  # UPSTREAM_TIMEOUT=1
    started = asyncio.get_running_loop().time()
    assert await send(port, "PUT", "/payments/7") == unavailable("Payments Service")
    assert await send(port, "GET", "/orders/7") == unavailable("Order Service")
    # The upstream timeout, not the client's own 10 s default: a bound loose enough for a loaded machine.
    assert asyncio.get_running_loop().time() - started < 8


@pytest.mark.gen_test(timeout=30)
async def test_a_body_over_the_limit_is_a_413_and_never_reaches_a_backend(start_gateway):
    backend = RawBackend()
    port = start_gateway([backend.url], [backend.url], MAX_BODY_BYTES="100")
    code, body = await send(port, "POST", "/payments", b'{"user_id": 1, "pad": "' + b"x" * 100 + b'"}')
    assert (code, json.loads(body)["message"]) == (413, "Request body must be at most 100 bytes.")
    assert (await send(port, "POST", "/payments", b'{"user_id": 1}'))[0] == 200
    assert [(s.method, s.path) for s in backend.requests()] == [("POST", "/payments")]
    for own in ("/health", "/openapi.yaml"):  # the gateway's own paths too, and its admin port's
        code, body = await send(port, "POST", own, b"x" * 101)
        assert (code, json.loads(body)["message"]) == (413, "Request body must be at most 100 bytes."), own
    for own in ("/health", "/ready", "/metrics"):
        code, body = await send(start_gateway.admin[port], "POST", own, b"x" * 101)
        assert (code, json.loads(body)["message"]) == (413, "Request body must be at most 100 bytes."), own


@pytest.mark.gen_test(timeout=30)
async def test_a_request_without_an_id_is_named_by_the_gateway_and_a_405_says_what_is_allowed(start_gateway):
    backend = RawBackend()
    port = start_gateway([backend.url], [backend.url])
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/payments/1/movements", raise_error=False)
    named = response.headers["X-Request-ID"]
    assert len(named) >= 16 and dict(backend.requests("GET")[0].headers)["x-request-id"] == named
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/payments", raise_error=False)
    assert (response.code, response.headers["Allow"]) == (405, "POST")


@pytest.mark.gen_test(timeout=30)
async def test_the_gateway_answers_its_own_paths_and_is_ready_only_when_every_service_is(start_gateway):
    backend = RawBackend()
    down = f"http://127.0.0.1:{free_port()}"
    port = start_gateway([backend.url], [down])
    admin = start_gateway.admin[port]
    for served in (port, admin):
        assert await send(served, "GET", "/health") == (200, b'{"status": "Success", "message": "Alive."}')
    code, metrics = await send(admin, "GET", "/metrics")
    assert code == 200 and b"# TYPE shop_http_request_duration_seconds histogram" in metrics  # the route, not samples
    assert await send(port, "GET", "/openapi.yaml") == (200, OPENAPI_SPEC.read_bytes())
    # The public port names no internal address and exports nothing: readiness and metrics are the admin port's.
    assert [(await send(port, "GET", path))[0] for path in ("/ready", "/metrics")] == [404, 404]
    code, body = await send(admin, "GET", "/ready")
    assert (code, json.loads(body)) == (503, {"status": "Fail", "message": "Payments Service not ready.",
                                              "backends": {backend.url: "ready", down: "unreachable"}})
    port = start_gateway([backend.url], [backend.url])
    code, body = await send(start_gateway.admin[port], "GET", "/ready")
    assert (code, json.loads(body)) == (200, {"status": "Success", "message": "Ready.",
                                              "backends": {backend.url: "ready"}})
    assert [s.path for s in backend.requests()].count("/ready") == 3  # one probe per replica and asking
    port = start_gateway([down], [down])
    assert json.loads((await send(start_gateway.admin[port], "GET", "/ready"))[1])["message"] == \
        "Order Service and Payments Service not ready."
    refusing = RawBackend(lambda *_: 503)  # up, but its own /ready says it is not
    port = start_gateway([backend.url, refusing.url], [refusing.url])
    code, body = await send(start_gateway.admin[port], "GET", "/ready")
    assert (code, json.loads(body)["backends"]) == (503, {backend.url: "ready", refusing.url: "not ready"})
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/openapi.yaml")
    assert response.headers["Content-Type"] == "application/yaml; charset=UTF-8"


class BrokenClient:
    """A pooled client with a bug: every fetch raises what no upstream failure raises."""

    async def fetch(self, *args, **kwargs):
        raise ValueError("a bug in the gateway")


@pytest.mark.gen_test(timeout=30)
async def test_a_bug_while_forwarding_is_a_500_envelope_without_a_trace(start_gateway):
    port = start_gateway(["http://127.0.0.1:9"], client=BrokenClient())
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/orders/1", raise_error=False)
    assert (response.code, response.headers["Content-Type"].split(";")[0], json.loads(response.body)) == \
        (500, "application/json", {"status": "Fail", "message": "Internal server error."})


async def exchange(port, *pieces):
    """(status, headers) of the answer to a request written by hand in `pieces`, 0.1 s apart: what Tornado's
    client would not send (a body without a Content-Type, chunks that arrive one by one)."""
    stream = await TCPClient().connect("127.0.0.1", port)
    for piece in pieces:
        await stream.write(piece)
        await asyncio.sleep(0.1)
    head = (await stream.read_until_close()).partition(b"\r\n\r\n")[0].decode("latin1")
    status_line, _, fields = head.partition("\r\n")
    return int(status_line.split()[1]), HTTPHeaders.parse(fields)


@pytest.mark.gen_test(timeout=30)
async def test_a_chunked_body_is_forwarded_whole_up_to_the_limit_and_counted_across_chunks(start_gateway):
    backend = RawBackend()
    port = start_gateway([backend.url], [backend.url], MAX_BODY_BYTES="100")

    async def post(*parts):
        """(status, headers) of a POST whose body is `parts`, one chunk each, a moment apart: Tornado (6.6)
        hands on the chunks that have arrived as one piece, so chunks sent at once were counted as one."""
        return await exchange(port, b"POST /payments HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json"
                              b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
                              *(b"%x\r\n%s\r\n" % (len(part), part) for part in parts), b"0\r\n\r\n")
    exact = b'{"user_id": 1, "pad": "' + b"x" * 75 + b'"}'  # 100 bytes: exactly the limit
    assert (await post(exact[:50], exact[50:]))[0] == 200
    assert backend.requests("POST")[0].body == exact
    code, headers = await post(b"x" * 60, b"x" * 60)
    assert (code, headers.get("Allow")) == (413, None)
    assert len(backend.requests("POST")) == 1


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("method, path", [("POST", "/orders"), ("PUT", "/payments/7")])
async def test_a_body_that_is_not_json_is_a_400_and_json_with_a_charset_is_forwarded(start_gateway, method, path):
    backend = RawBackend()
    port = start_gateway([backend.url], [backend.url])

    async def write(content_type):
        return await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{path}", method=method, body=b'{"a": 1}',
                                             headers={"Content-Type": content_type}, raise_error=False)
    refused = await write("text/plain")
    assert (refused.code, refused.reason, json.loads(refused.body)) == \
        (400, "Bad Request", {"status": "Fail", "message": "Content-Type must be application/json."})
    assert (await write("Application/JSON; charset=utf-8")).code == 200
    assert len(backend.requests(method)) == 1


async def fetch(port, method, path, **headers):
    return await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{path}", method=method, headers=headers,
                                         raise_error=False)


def shown(response, *names):
    return [response.headers.get(name) for name in names]


@pytest.mark.gen_test(timeout=30)
async def test_a_head_is_answered_with_the_headers_of_its_get_and_no_body(start_gateway):
    backend = RawBackend()
    port = start_gateway([backend.url], [backend.url])
    read, head = await fetch(port, "GET", "/orders/1"), await fetch(port, "HEAD", "/orders/1")
    assert int(read.headers["Content-Length"]) == len(read.body) > 0
    assert abs(parsedate_to_datetime(read.headers["Date"]).timestamp() - time.time()) < 60
    assert (head.code, head.body, *shown(head, "Content-Type", "Content-Length", "Etag")) == \
        (200, b"", *shown(read, "Content-Type", "Content-Length", "Etag"))
    assert [(s.method, s.path) for s in backend.requests()] == [("GET", "/orders/1")] * 2  # asked as its GET
    refused = await fetch(port, "HEAD", "/payments")  # no GET there, so no HEAD either
    assert (refused.code, refused.body, refused.headers["Allow"]) == (405, b"", "POST")
    assert len(backend.requests()) == 2


@pytest.mark.gen_test(timeout=30)
async def test_the_backend_s_etag_and_its_304_pass_through_unchanged_and_without_a_body(start_gateway):
    backend = RawBackend()
    port = start_gateway([backend.url], [backend.url])
    assert shown(await fetch(port, "GET", "/payments/1"), "Etag") == [ETAG]
    for method in ("GET", "HEAD"):
        cached = await fetch(port, method, "/payments/1", **{"If-None-Match": ETAG})
        # No Content-Type either: a cache takes a 304's headers over for the 200 it stored (RFC 9111 4.3.4).
        assert (cached.code, cached.body, *shown(cached, "Etag", "Content-Type", "Content-Length")) == \
            (304, b"", ETAG, None, None)
    changed = await fetch(port, "GET", "/payments/1", **{"If-None-Match": '"another"'})
    assert (changed.code, *shown(changed, "Etag")) == (200, ETAG)
    assert [dict(s.headers).get("if-none-match") for s in backend.requests()] == [None, ETAG, ETAG, '"another"']
    port = start_gateway([RawBackend(etag=None).url])
    plain = await fetch(port, "GET", "/orders/1")
    assert (plain.code, *shown(plain, "Etag")) == (200, None)  # none of the gateway's own either


@pytest.mark.gen_test(timeout=60)
async def test_the_order_service_s_etag_and_its_304_reach_the_client_through_the_gateway(start_gateway,
                                                                                        order_service, user_id):
    port = start_gateway([f"http://127.0.0.1:{order_service.port}"])
    placed = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/orders", method="POST",
                                           body=json.dumps({"user_id": user_id, "amount": 5}),
                                           headers={"Content-Type": "application/json"})
    path = f"/orders/{json.loads(placed.body)['order_id']}"
    read = await fetch(port, "GET", path)
    etag = read.headers["Etag"]  # Tornado's RequestHandler puts a hash of the body on every 200 to a GET
    head = await fetch(port, "HEAD", path)
    assert (head.code, head.body, *shown(head, "Etag", "Content-Length")) == \
        (200, b"", etag, str(len(read.body)))
    cached = await fetch(port, "GET", path, **{"If-None-Match": etag})
    assert (cached.code, cached.body, *shown(cached, "Etag", "Content-Type")) == (304, b"", etag, None)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("code, reason", [(404, "Not Found"), (299, "Unknown")])
async def test_a_backend_s_status_code_passes_through_with_the_standard_reason_phrase_or_unknown(start_gateway,
                                                                                                code, reason):
    backend = RawBackend(lambda *_: code)
    port = start_gateway([backend.url])
    response = await fetch(port, "GET", "/orders/1")
    assert (response.code, response.reason, response.body) == \
        (code, reason, b'{"status": "Success", "message": "GET /orders/1 seen."}')


class RecordingTracer(tracing.Off):
    """Tracing on, as far as the gateway can tell: each SERVER span is kept as [method, route, the request's
    headers as given, status code], and its own context replaces the request's `traceparent`."""
    enabled = True
    CONTEXT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    def __init__(self):
        self.spans = []

    @contextmanager
    def server(self, method, route, headers):
        span = [method, route, dict(headers), None]
        self.spans.append(span)
        headers["traceparent"] = self.CONTEXT

        class Span(tracing.NoSpan):
            def set_status_code(self, code):
                span[3] = code
        yield Span()


@pytest.mark.gen_test(timeout=30)
async def test_each_forwarded_request_is_a_span_named_by_its_route_that_the_backend_continues(start_gateway,
                                                                                             monkeypatch):
    tracer = RecordingTracer()
    monkeypatch.setattr(tracing, "current", tracer)
    backend = RawBackend(lambda *_: 404)
    port = start_gateway([backend.url])
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert (await fetch(port, "GET", "/orders/7?x=1", traceparent=incoming)).code == 404
    [(method, route, headers, code)] = tracer.spans
    assert (method, route, headers["traceparent"], code) == ("GET", "/orders/{order_id}", incoming, 404)
    assert dict(backend.requests()[0].headers)["traceparent"] == RecordingTracer.CONTEXT


@pytest.mark.gen_test(timeout=30)
async def test_each_forwarded_request_is_counted_by_handler_method_and_status(start_gateway):
    port = start_gateway([RawBackend(lambda *_: 418).url])
    sample = 'shop_http_request_duration_seconds_count{handler="ProxyHandler",method="GET",status="418"} '

    async def count():
        lines = (await fetch(start_gateway.admin[port], "GET", "/metrics")).body.decode().splitlines()
        return next((float(line.removeprefix(sample)) for line in lines if line.startswith(sample)), 0.0)
    before = await count()  # the registry is the process's: earlier tests' requests are in it too
    assert (await fetch(port, "GET", "/orders/1")).code == 418
    assert await count() == before + 1


@pytest.mark.gen_test(timeout=30)
async def test_invented_methods_count_as_other_and_add_no_series(start_gateway):
    port = start_gateway([RawBackend().url])

    async def series():
        lines = (await fetch(start_gateway.admin[port], "GET", "/metrics")).body.decode().splitlines()
        return {line.split("{")[1].split("}")[0] for line in lines
                if line.startswith("shop_http_request_duration_seconds_count{")}
    for n in range(5):  # on a proxied path (the ProxyServer) and on one of the gateway's own (a RequestHandler)
        for path in ("/orders/1", "/health"):
            assert (await exchange(port, f"BREW{n} {path} HTTP/1.1\r\nHost: g\r\nConnection: close\r\n\r\n"
                                   .encode()))[0] in (400, 405)
    labels = await series()
    assert not [label for label in labels if "BREW" in label]
    assert any('method="OTHER"' in label for label in labels)


@pytest.mark.gen_test(timeout=30)
async def test_a_body_without_a_type_is_taken_for_json_no_body_needs_none_and_a_patch_s_body_is_checked_first(
        start_gateway):
    backend = RawBackend()
    port = start_gateway([backend.url])
    untyped = b'{"user_id": 1, "amount": 1}'
    assert (await exchange(port, b"POST /orders HTTP/1.1\r\nHost: gateway\r\nContent-Length: %d\r\n"
                                 b"Connection: close\r\n\r\n%s" % (len(untyped), untyped)))[0] == 200
    assert (await exchange(port, b"POST /orders HTTP/1.1\r\nHost: gateway\r\nContent-Type: text/plain\r\n"
                                 b"Content-Length: 0\r\nConnection: close\r\n\r\n"))[0] == 200
    assert [s.body for s in backend.requests("POST")] == [untyped, b""]
    patch = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/orders/1", method="PATCH", body=b"x",
                                          headers={"Content-Type": "text/plain"}, raise_error=False)
    assert patch.code == 400  # as `BaseHandler.prepare`: the body's type before the method


@pytest.mark.gen_test(timeout=60)
async def test_a_replica_that_never_answers_its_probe_is_unreachable_within_the_probe_timeout(start_gateway):
    held = RawBackend(lambda *_: HOLD)
    port = start_gateway([held.url], [held.url])
    started = asyncio.get_running_loop().time()
    code, body = await send(start_gateway.admin[port], "GET", "/ready")
    assert (code, json.loads(body)["backends"]) == (503, {held.url: "unreachable"})
    # The probe's 2 s, not the client's 10 s default: `/ready` must answer an orchestrator's probe in time.
    assert asyncio.get_running_loop().time() - started < 8


# Blocking reads: a waiting request's own timeout (its wait + UPSTREAM_TIMEOUT, and only its), `Prefer` forwarded
# and `Preference-Applied` passed back, WAIT_POOL_SIZE (beyond it a request goes on without its wait), and a
# waiting request cancelled when its client leaves.

def sample(name, **labels):
    return REGISTRY.get_sample_value(name, labels) or 0


async def timed(port, path, method="GET", headers=None):
    started = time.monotonic()
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{path}", method=method, raise_error=False,
                                             body=b'{"user_id": 1, "amount": 1}' if method == "POST" else None,
                                             headers={"Content-Type": "application/json", **(headers or {})},
                                             request_timeout=30)
    return response.code, response.headers, time.monotonic() - started


def hold_waits(method, nth):
    return HOLD


@pytest.mark.gen_test(timeout=60)
async def test_only_a_waiting_request_gets_its_wait_on_top_of_the_upstream_timeout(start_gateway):
    backend = RawBackend(hold_waits)
    port = start_gateway([backend.url])  # UPSTREAM_TIMEOUT=1
    plain, waiting, posted, invalid = await asyncio.gather(
        timed(port, "/orders/1"), timed(port, "/orders/1?wait=3"), timed(port, "/orders", "POST", {"Prefer": "wait=2"}),
        timed(port, "/orders/1?wait=99"))  # not a wait: the backend would refuse it at once
    assert [code for code, _, _ in (plain, waiting, posted, invalid)] == [503] * 4
    assert 1 <= plain[2] < 2.5 and 1 <= invalid[2] < 2.5
    assert 4 <= waiting[2] < 5.5 and 3 <= posted[2] < 4.5


@pytest.mark.gen_test(timeout=30)
async def test_prefer_is_forwarded_and_preference_applied_passed_back(start_gateway):
    backend = RawBackend()
    port = start_gateway([backend.url])
    await timed(port, "/orders", "POST", {"Prefer": "wait=5, respond-async"})
    assert dict(backend.requests("POST")[0].headers)["prefer"] == "wait=5, respond-async"


@pytest.mark.gen_test(timeout=60)
async def test_beyond_wait_pool_size_a_request_goes_on_without_its_wait(start_gateway):
    calls = iter(range(100))
    backend = RawBackend(lambda method, nth: HOLD if next(calls) == 0 else ANSWER)  # the first request is held
    port = start_gateway([backend.url], WAIT_POOL_SIZE="1", UPSTREAM_TIMEOUT="5")
    refused = sample("shop_waits_refused_total", cap="gateway")
    held = asyncio.ensure_future(timed(port, "/orders/7?wait=20"))
    await eventually(lambda: assert_seen(backend, 1))
    code, _, took = await timed(port, "/orders/7?wait=20&x=1")
    posted, _, _ = await timed(port, "/orders", "POST", {"Prefer": "wait=20"})
    assert (code, posted) == (200, 200) and took < 2
    seen = [(s.method, s.path, dict(s.headers).get("prefer")) for s in backend.requests()]
    assert seen == [("GET", "/orders/7?wait=20", None), ("GET", "/orders/7?x=1", None), ("POST", "/orders", None)]
    assert sample("shop_waits_refused_total", cap="gateway") == refused + 2
    backend.close()
    held.cancel()


def assert_seen(backend, count):
    assert len(backend.requests()) == count


@pytest.mark.gen_test(timeout=60)
async def test_a_waiting_request_whose_client_leaves_is_cancelled(start_gateway):
    backend = RawBackend(hold_waits)
    port = start_gateway([backend.url], UPSTREAM_TIMEOUT="20")
    waiting = sample("shop_waiting_requests")
    stream = await TCPClient().connect("127.0.0.1", port)
    await stream.write(b"GET /orders/1?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n")
    await eventually(lambda: assert_seen(backend, 1))
    assert sample("shop_waiting_requests") == waiting + 1
    stream.close()

    async def released():
        assert sample("shop_waiting_requests") == waiting
    await eventually(released, timeout=5)
