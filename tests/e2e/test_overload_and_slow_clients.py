"""Overload, slow and hostile clients. 1,000 concurrent requests through a gateway with a small
backend pool wait for a connection instead of getting a 503; every process drops a connection that does not
finish its headers or body, or idles, within the configured bound, while normal requests go on being served;
the gateway caps its connections and takes a client's address from the connection, not from X-Forwarded-For."""
import asyncio
import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness.client import call
from harness.stack import Stack
from tests.conftest import wait_for

LIMITS = {"CLIENT_IDLE_TIMEOUT": "1", "CLIENT_BODY_TIMEOUT": "1"}
POOL = 4
# A stack of its own for the burst, with generous client bounds: the test's 1,000 connections keep both its
# own event loop and the gateway's busy, so on a loaded machine a request or its headers can take a second to
# be sent; the last request in line gets time for its answer.
BURST = {"BACKEND_POOL_SIZE": str(POOL), "CLIENT_IDLE_TIMEOUT": "60", "UPSTREAM_TIMEOUT": "60"}


@pytest.fixture(scope="module")
def stack():
    with Stack(prefix="shop_e2e", extra_env=LIMITS) as running:
        yield running
        for process in running.processes.values():
            assert "Traceback" not in process.log(), process.log()[-5000:]


async def status_of_get(url, path):
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    return int(answer.split(b" ", 2)[1]) if answer else None


def connections_to(pid, port):
    """The local addresses (hex, as /proc/net/tcp writes them) of the open TCP connections of process `pid` to
    127.0.0.1:`port` (state 01 is ESTABLISHED), each once: the kernel writes the table a page per read and
    resumes at a position in its hash table, so while the burst's connections come and go a row can be written
    again (CI saw one socket 8 times)."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            sockets.add(os.readlink(fd))
        except OSError:
            pass  # closed meanwhile
    remote = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table]
    ours = [row for row in rows if row[2] == remote and row[3] == "01" and f"socket:[{row[9]}]" in sockets]
    by_inode = {row[9]: row[1] for row in ours}
    return sorted(by_inode.values())


@pytest.fixture
def burst_stack():
    with Stack(prefix="shop_e2e", extra_env=BURST) as running:
        yield running


def test_a_thousand_concurrent_gets_wait_for_the_small_backend_pool_and_none_gets_a_503(burst_stack):
    gateway = burst_stack.url
    code, body = call(gateway, "POST", "/orders", {"user_id": 1, "amount": 1})
    assert code == 201, body
    gateway_pid, order_port = burst_stack["gateway"].popen.pid, urlsplit(burst_stack["order"].health_url).port
    peak, done = [[]], threading.Event()  # the most connections seen at once: their local addresses

    def watch_backend_connections():
        while not done.is_set():
            peak[0] = max(peak[0], connections_to(gateway_pid, order_port), key=len)

    async def burst():
        return await asyncio.gather(*(status_of_get(gateway, f"/orders/{body['order_id']}") for _ in range(1000)))

    watcher = threading.Thread(target=watch_backend_connections)
    watcher.start()
    try:
        statuses = asyncio.run(burst())
    finally:
        done.set()
        watcher.join()
    assert {code: statuses.count(code) for code in set(statuses)} == {200: 1000}
    assert 1 <= len(peak[0]) <= POOL, \
        f"{len(peak[0])} gateway connections at once to the order port {order_port:04X}, from {peak[0][:2 * POOL]}"


def connect(url):
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=5)


def unfinished_headers(url):
    sock = connect(url)
    sock.sendall(b"GET /orders/1 HTTP/1.1\r\nHost: shop\r\nX-Slow: ")
    return sock


def unfinished_body(url):
    sock = connect(url)
    sock.sendall(b"POST /orders HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"user_id\": ")
    return sock


def idle_after_one_request(url):
    sock = connect(url)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: shop\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
        answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    return sock


def closed_by_server(sock):
    """True once the server has closed `sock` (end of stream or reset), False while it is still open."""
    sock.settimeout(0.05)
    try:
        return sock.recv(65536) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


@pytest.mark.parametrize("process", ["gateway", "order"])
def test_slow_clients_are_dropped_after_the_bound_while_normal_requests_are_served(stack, process):
    url = stack[process].health_url.rsplit("/", 1)[0]
    slow = [make(url) for make in (unfinished_headers, unfinished_body, idle_after_one_request) for _ in range(20)]
    try:
        assert call(url, "GET", "/orders/999999999")[0] == 404
        assert call(stack.url, "GET", "/orders/999999999")[0] == 404

        def all_dropped():
            assert all(closed_by_server(sock) for sock in slow)
        wait_for(all_dropped, timeout=20)
        assert call(url, "GET", "/orders/999999999")[0] == 404
    finally:
        for sock in slow:
            sock.close()


def read_until_closed(sock):
    sock.settimeout(10)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionError:
        pass
    return answer


def healthy(url):
    assert call(url, "GET", "/health")[0] == 200


def test_gateway_refuses_connections_over_its_cap_with_a_503_envelope_and_serves_again_below_it(stack):
    capped = stack.add_gateway("gateway_capped", MAX_CONNECTIONS="10", CLIENT_IDLE_TIMEOUT="60")
    held = [idle_after_one_request(capped) for _ in range(10)]
    try:
        with connect(capped) as refused:
            answer = read_until_closed(refused)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert answer.endswith(b'{"status": "Fail", "message": "Too many connections; try again later."}'), answer
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: healthy(capped))


def access_log_address(process, path):
    """The client address in `process`'s access-log line for `path` (a 404 is logged at WARNING)."""
    lines = [line for line in process.log().splitlines() if f" {path} (" in line]
    assert lines, f"no access-log line for {path}"
    return lines[-1].split(f" {path} (", 1)[1].split(")", 1)[0]


def test_gateway_ignores_x_forwarded_for_unless_told_it_sits_behind_a_trusted_proxy(stack):
    spoofed = {"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "203.0.113.7"}
    path = f"/nowhere-{time.monotonic_ns()}"
    assert call(stack.url, "GET", path, headers=spoofed)[0] == 404
    assert wait_for(lambda: access_log_address(stack["gateway"], path)) == "127.0.0.1"

    behind_proxy = stack.add_gateway("gateway_behind_proxy", TRUSTED_PROXY="1")
    assert call(behind_proxy, "GET", path, headers=spoofed)[0] == 404
    assert wait_for(lambda: access_log_address(stack["gateway_behind_proxy"], path)) == "203.0.113.7"
