"""The gateway's forwarding rules, seen from the backends' side (raw-socket stand-ins, `tests.e2e.raw_backend`):
a POST or PUT whose kept-alive connection broke before the answer is a 503 and is never sent again; a request
goes to another replica only when its connection was refused, never after it may have reached one."""
import os
import tempfile
import time

import pytest

from harness.client import call
from harness.stack import COMMANDS, Process, free_port
from tests.e2e.raw_backend import ANSWER, DROP, HOLD, RawBackend

# Long enough for a resend to arrive if the gateway made one (it would follow at once).
AFTERMATH = 1.0


@pytest.fixture
def gateway():
    """`start(order_urls, payment_urls)` runs a gateway in front of those backends; returns its URL."""
    processes = []

    def start(order_urls, payment_urls=("http://127.0.0.1:9",)):
        port = free_port()
        env = {**os.environ, "GATEWAY_PORT": str(port), "ORDER_SVC_URL": ",".join(order_urls),
               "PAYMENT_SVC_URL": ",".join(payment_urls), "UPSTREAM_TIMEOUT": "1", "LOG_LEVEL": "WARNING",
               "GATEWAY_ADMIN_PORT": "0"}
        log = tempfile.NamedTemporaryFile(prefix="gateway_", suffix=".log", delete=False).name
        process = Process("gateway", COMMANDS["gateway"], env, log, f"http://127.0.0.1:{port}/health")
        processes.append(process)
        process.start()
        process.wait_healthy()
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.stop()


def second_request_dropped(method, nth):
    """Answer the first request on each connection, close the connection on reading the second."""
    return ANSWER if nth == 1 else DROP


@pytest.mark.parametrize("method, path, body", [("POST", "/orders", {"user_id": 1, "amount": 1}),
                                                ("PUT", "/payments/1", {"amount": 1})])
def test_a_write_whose_kept_alive_connection_broke_is_a_503_and_never_resent(gateway, method, path, body):
    backend = RawBackend(second_request_dropped)
    url = gateway([backend.url], [backend.url])
    read = "/orders/1" if path.startswith("/orders") else "/payments/1"
    assert call(url, "GET", read)[0] == 200  # the gateway now holds a kept-alive connection to the backend
    code, reply = call(url, method, path, body)
    time.sleep(AFTERMATH)
    writes = backend.requests(method)
    assert writes and writes[0].nth == 2, f"the {method} did not reuse the kept-alive connection: {backend.seen}"
    assert code == 503 and reply["status"] == "Fail", (code, reply)
    assert len(writes) == 1, f"the {method} was sent {len(writes)} times: {backend.seen}"


def test_a_refused_replica_is_skipped_for_every_method(gateway):
    live = RawBackend()
    url = gateway([f"http://127.0.0.1:{free_port()}", live.url])  # nothing listens on the first
    for _ in range(4):
        assert call(url, "POST", "/orders", {"user_id": 1, "amount": 1})[0] == 200
        assert call(url, "GET", "/orders/1")[0] == 200
    assert len(live.requests("POST")) == 4 and len(live.requests("GET")) == 4


@pytest.mark.parametrize("failure", [DROP, HOLD], ids=["connection broken", "no answer within the timeout"])
def test_a_write_that_reached_a_replica_is_not_sent_to_another(gateway, failure):
    failing, live = RawBackend(lambda method, nth: failure), RawBackend()
    url = gateway([failing.url, live.url])
    codes = [call(url, "POST", "/orders", {"user_id": 1, "amount": 1})[0] for _ in range(6)]
    time.sleep(AFTERMATH)
    # Replicas are taken in turn: about half the requests go to the failing one first. Each of those is a 503
    # there and then, and the live replica never sees it.
    assert len(failing.requests()) == codes.count(503) > 0, (codes, failing.seen)
    assert len(live.requests()) == codes.count(200) > 0, (codes, live.seen)
    assert len(failing.requests()) + len(live.requests()) == 6
