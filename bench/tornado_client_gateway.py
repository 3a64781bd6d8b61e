"""`python -m bench.tornado_client_gateway`: the gateway forwarding with Tornado's own `SimpleAsyncHTTPClient`
in place of `proxy.http_client.KeepAliveClient`, everything else as `python gateway.py`. The product ships the
hand-written client only; this is what `bench.gateway_cpu` measures it against."""
from tornado.httpclient import HTTPClientError
from tornado.simple_httpclient import HTTPTimeoutError, SimpleAsyncHTTPClient

from common.runtime.lifecycle import run
from gateway import Gateway


class TornadoClient:
    """`KeepAliveClient`'s interface over a `SimpleAsyncHTTPClient` of at most `pool_size` requests at once
    (it opens a connection per request: Tornado's simple client keeps none alive)."""

    def __init__(self, pool_size):
        self.client = SimpleAsyncHTTPClient(force_instance=True, max_clients=pool_size)

    async def fetch(self, url, method="GET", headers=None, body=None, timeout=10.0, connect_timeout=2.0):
        try:
            return await self.client.fetch(url, method=method, headers=headers, body=body, raise_error=False,
                                           request_timeout=timeout, connect_timeout=connect_timeout,
                                           follow_redirects=False, decompress_response=False)
        except (HTTPTimeoutError, HTTPClientError) as exc:
            # What the gateway's Backend takes for "no answer in time" (it passes every real status through).
            raise TimeoutError(str(exc)) from None

    def close(self):
        self.client.close()


class TornadoClientGateway(Gateway):
    client_class = TornadoClient


if __name__ == "__main__":
    run(TornadoClientGateway)
