"""`Gateway.start` wires what `python gateway.py` runs (the e2e tests start that process; this is the fast judge):
the port of its settings served by the `ProxyServer`, requests forwarded on a client with the configured pool
size, `/ready` probes on a client of their own; `stop` closes the server and both clients. Backends are
raw-socket stand-ins. A `GATEWAY_PROXY` left in the environment stops the process before it starts."""
import os
import subprocess
import sys

import pytest
from tornado.httpclient import AsyncHTTPClient

from common.runtime.config import ConfigurationError, load_settings
from gateway import Gateway
from harness.stack import ROOT, free_port
from proxy.server import ProxyServer
from tests.e2e.raw_backend import RawBackend


def pool_sizes(client):
    """{address: pool size} of the backends `client` has been asked to reach."""
    return {address: pool.size for address, pool in client._pools.items()}


@pytest.mark.gen_test(timeout=30)
async def test_a_started_gateway_serves_its_port_with_one_client_to_forward_and_one_to_probe():
    backend = RawBackend()
    address, port = ("127.0.0.1", backend.port), free_port()
    gateway = Gateway(load_settings({"GATEWAY_PORT": str(port), "ORDER_SVC_URL": backend.url,
                                     "PAYMENT_SVC_URL": backend.url, "GATEWAY_ADMIN_PORT": "0",
                                     "ORDER_SVC_ADMIN_URL": backend.url, "PAYMENT_SVC_ADMIN_URL": backend.url,
                                     "BACKEND_POOL_SIZE": "3", "UPSTREAM_TIMEOUT": "5"}))
    await gateway.start()
    try:
        assert type(gateway.server.request_callback) is ProxyServer
        ready = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{gateway.admin_server.port}/ready",
                                              raise_error=False)
        assert ready.code == 200
        assert (pool_sizes(gateway.probe_client), pool_sizes(gateway.client)) == ({address: 2}, {})
        read = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/orders/1", raise_error=False)
        assert (read.code, read.body) == (200, b'{"status": "Success", "message": "GET /orders/1 seen."}')
        assert pool_sizes(gateway.client) == {address: 3}
        assert [len(pool.idle) for pool in gateway.client._pools.values()] == [1]  # kept alive for the next
    finally:
        await gateway.stop()
    assert [len(pool.idle) for pool in gateway.client._pools.values()] == [0]
    assert [len(pool.idle) for pool in gateway.probe_client._pools.values()] == [0]
    with pytest.raises(ConnectionRefusedError):
        await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/health")


@pytest.mark.parametrize("value", ["direct", "handler", ""])
def test_a_gateway_proxy_setting_is_refused_by_name(value):
    with pytest.raises(ConfigurationError, match="^GATEWAY_PROXY is not a setting: the gateway has a single proxy "):
        load_settings({"GATEWAY_PROXY": value})


def test_a_gateway_started_with_gateway_proxy_set_exits_at_once_naming_it():
    port = free_port()
    done = subprocess.run([sys.executable, "gateway.py"], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "GATEWAY_PORT": str(port), "GATEWAY_ADMIN_PORT": "0",
                               "GATEWAY_PROXY": "handler"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("gateway: GATEWAY_PROXY is not a setting")
