"""An open-loop load generator: POST /orders at a fixed rate, whatever the response times (wrk has no
fixed-rate mode). 100 requests/s costs a Python process little CPU; the latency figure is taken from
server-side timestamps, so the client's own delays do not count in it."""
import asyncio
import time
from collections import Counter

from bench.progress import say
from proxy.http_client import KeepAliveClient


async def _steady(url, rate, seconds, users):
    client = KeepAliveClient()
    codes, tasks = Counter(), []

    async def post(i):
        body = f'{{"user_id": {i % users + 1}, "amount": 1, "description": "bench"}}'
        try:
            response = await client.fetch(url + "/orders", "POST", {"Content-Type": "application/json"},
                                          body.encode(), timeout=10)
        except TimeoutError:  # an overloaded topology: counted, the load goes on at its rate
            codes["timeout"] += 1
        else:
            codes[response.code] += 1

    start, total = time.monotonic(), int(rate * seconds)
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(post(i)))
        if i and i % (rate * 5) == 0:
            say(f"  {i}/{total} orders sent")
    await asyncio.gather(*tasks)
    client.close()
    return codes, time.monotonic() - start


def steady_orders(url, rate, seconds, users):
    """POST `rate` orders per second for `seconds`; returns ({status code: count}, seconds taken)."""
    return asyncio.run(_steady(url, rate, seconds, users))
