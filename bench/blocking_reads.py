"""(9) Blocking reads, through the gateway on a fresh stack:

- create→final as a client sees it: `POST /orders` with `Prefer: wait=10` (one request) beside `POST` then
  `GET /orders/{id}` every 5 ms until final, each for `orders` orders at `rate` per second; the requests the
  gateway served for them (its own metrics), and the server-side create→final of the same orders;
- `holders` clients each holding a `GET /orders/{id}?wait=30` (Payments stopped, so nothing settles): memory and
  CPU of the gateway and the Order Service, the latency of other requests meanwhile beside the same load
  without them, and how long the NOTIFYs of their orders' results take to answer all of them;
- `leavers` clients that disconnect while waiting, in waves of `wave`: the waiters left behind (gauges), the
  processes' memory and asyncio tasks before and after."""
import asyncio
import json
import resource
import statistics
import time
from dataclasses import dataclass
from decimal import Decimal

import psycopg2

from bench import measure, tools
from bench.progress import say
from bench.table import Row, mb, ms
from harness.invariants import query
from harness.metrics import sample_total, scrape
from harness.stack import Stack
from order_svc import repo
from proxy.http_client import KeepAliveClient

JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Sizes:
    orders: int = 1000
    rate: int = 100
    poll_every: float = 0.005
    holders: int = 1000
    hold_seconds: float = 10
    other_connections: int = 8
    other_seconds: float = 5
    leavers: int = 10_000
    wave: int = 1000
    users: int = 1000
    rounds: int = 3


FULL = Sizes()
SMOKE = Sizes(orders=40, rate=40, holders=50, hold_seconds=1, other_connections=2, other_seconds=1, leavers=100,
              wave=50, users=100, rounds=1)


def order_of(response):
    return json.loads(response.body, parse_float=Decimal)["order"]


def percentiles(values):
    ordered = sorted(values)
    return [measure.percentile(ordered, share) * 1000 for share in (0.5, 0.95, 0.99)]


def proxied_requests(stack):
    return sample_total(scrape(stack["gateway"]), "shop_http_request_duration_seconds_count",
                        handler="ProxyHandler") or 0


def gauge(stack, name, metric):
    return sample_total(scrape(stack[name]), metric) or 0


def waiting(stack, count):
    """True once the gateway and the Order Service both have `count` waiting requests, else what they have."""
    counts = tuple(gauge(stack, name, "shop_waiting_requests") for name in ("gateway", "order"))
    return counts == (count, count) or counts


def rss_mb(process):
    for line in open(f"/proc/{process.popen.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


async def steadily(plan, place):
    """`place(i)` for i in range(orders), started `rate` per second; their results in order."""
    start, tasks = time.monotonic(), []
    for i in range(plan.orders):
        delay = start + i / plan.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(place(i)))
    return await asyncio.gather(*tasks)


async def created_then(plan, url, poll):
    """[(seconds from sending the POST to seeing the order final, order id)] of each order."""
    client = KeepAliveClient()

    async def place(i):
        body = f'{{"user_id": {i % plan.users + 1}, "amount": 1}}'.encode()
        started = time.perf_counter()
        prefer = {} if poll else {"Prefer": "wait=10"}
        order = order_of(await client.fetch(url + "/orders", "POST", {**JSON, **prefer}, body))
        while order["status"] == "NEW" and poll:
            await asyncio.sleep(plan.poll_every)
            order = order_of(await client.fetch(f"{url}/orders/{order['order_id']}"))
        if order["status"] == "NEW":
            raise RuntimeError(f"order {order['order_id']} not final within its wait")
        return time.perf_counter() - started, order["order_id"]

    try:
        return await steadily(plan, place)
    finally:
        client.close()


def server_side_ms(order_dsn, order_ids):
    rows = query(order_dsn, "SELECT extract(epoch FROM updated_at - created_at) FROM orders WHERE order_id = "
                            "ANY(%s)", (order_ids,))
    return percentiles([float(seconds) for seconds, in rows])


def latency_rows(plan, stack):
    rows, served = [], {}
    for poll in (False, True):
        name = "POST + GET every 5 ms" if poll else "POST with Prefer: wait"
        say(f"[9] blocking reads: {plan.orders} orders at {plan.rate}/s, {name}")
        before = proxied_requests(stack)
        results = asyncio.run(created_then(plan, stack.url, poll))
        served[poll] = proxied_requests(stack) - before
        client = percentiles([seconds for seconds, _ in results])
        server = server_side_ms(stack.order_dsn, [order_id for _, order_id in results])
        rows.append(Row(f"9. create→final seen by the client, {name}, {plan.orders:,} orders at {plan.rate}/s: "
                        "p50 / p95 / p99", " / ".join(map(ms, client)),
                        f"server-side (created_at → updated_at) {' / '.join(map(ms, server))}; p50 "
                        f"+{client[0] - server[0]:.1f} ms", "p50 within 1 ms of the server's" if not poll else ""))
    rows.append(Row("9. requests the gateway served for them: Prefer: wait / polling every 5 ms",
                    f"{served[False]:,.0f} / {served[True]:,.0f}",
                    f"{served[False] / plan.orders:.2f} / {served[True] / plan.orders:.2f} per order",
                    "one per order"))
    return rows


async def hold(url, order_ids, seconds=30):
    """One connection per order, each sending `GET /orders/{id}?wait=seconds`; returns the (reader, writer)s."""
    host, port = url.split("//")[1].split(":")

    async def one(order_id):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /orders/{order_id}?wait={seconds} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        await writer.drain()
        return reader, writer

    return await asyncio.gather(*(one(order_id) for order_id in order_ids))


async def leave(connections):
    """Close every held connection (the socket closes only while the loop runs)."""
    for _, writer in connections:
        writer.close()
    await asyncio.gather(*(writer.wait_closed() for _, writer in connections), return_exceptions=True)


async def answered(connections):
    """Seconds until every held connection got its answer's head."""
    started = time.monotonic()
    await asyncio.gather(*(reader.readuntil(b"\r\n\r\n") for reader, _ in connections))
    return time.monotonic() - started


def new_orders(stack, plan, count):
    """`count` NEW orders (of as many users), written straight into the table without outbox rows: nothing but the
    waits themselves is to run in the Order Service while they are measured (the relay would publish and then
    resend every outbox row)."""
    conn = psycopg2.connect(stack.order_dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO orders (user_id, amount, description) SELECT g %% %s + 1, 1, 'bench' "
                        "FROM generate_series(1, %s) g RETURNING order_id", (plan.users, count))
            return [order_id for order_id, in cur.fetchall()]
    finally:
        conn.close()


def until(check, timeout=60, what="the stack"):
    """Wait until `check()` returns True; raises `RuntimeError` with its last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (value := check()) is not True:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {value} after {timeout} s")
        time.sleep(0.1)


def other_load(stack, plan):
    return tools.wrk(stack.url + "/orders/1", plan.other_connections, plan.other_seconds)


def finalize_all(stack, order_ids, batch=200):
    """The orders' results as another replica's consumer applies them: a statement (and a NOTIFY) per `batch`."""
    for start in range(0, len(order_ids), batch):
        chunk = order_ids[start:start + batch]
        measure.run_sql(stack.order_dsn, repo.FINALIZE_ORDERS.sql, {
            **repo.FINALIZE_ORDERS.defaults, "order_ids": chunk, "statuses": ["FINISHED"] * len(chunk)})


def holders_rows(plan, stack):
    """Other requests' latency without the holders and beside them, in alternating rounds (a shared machine's load
    moves from minute to minute); the first round also measures memory and CPU, the last one the wake-ups."""
    processes = {name: stack[name] for name in ("gateway", "order")}
    alone, beside = [], []
    loop = asyncio.new_event_loop()
    for round_ in range(1, plan.rounds + 1):
        say(f"[9] blocking reads: round {round_}/{plan.rounds}, other requests' latency without and beside "
            f"{plan.holders:,} clients holding a wait")
        alone.append(other_load(stack, plan))
        order_ids = new_orders(stack, plan, plan.holders)
        memory = {name: rss_mb(p) for name, p in processes.items()}
        connections = loop.run_until_complete(hold(stack.url, order_ids))
        until(lambda: waiting(stack, plan.holders), what="waiters (gateway, order)")
        if round_ == 1:
            held = {name: rss_mb(p) for name, p in processes.items()}
            cpu = {name: p.cpu_seconds() for name, p in processes.items()}
            time.sleep(plan.hold_seconds)
            idle = {name: (p.cpu_seconds() - cpu[name]) / plan.hold_seconds for name, p in processes.items()}
            grown = memory
        beside.append(other_load(stack, plan))
        started = time.monotonic()
        finalize_all(stack, order_ids)
        loop.run_until_complete(answered(connections))
        woken = time.monotonic() - started
        loop.run_until_complete(leave(connections))
    loop.close()
    p50, p99 = (lambda runs: statistics.median(r.latency_p50_ms for r in runs)), \
        (lambda runs: statistics.median(r.latency_p99_ms for r in runs))
    return [
        Row(f"9. {plan.holders:,} clients holding a wait: RSS gateway / order (before → holding)",
            " / ".join(f"{mb(grown[n])} → {mb(held[n])}" for n in processes),
            " / ".join(f"{(held[n] - grown[n]) * 1024 / plan.holders:.1f} KB per waiter" for n in processes), ""),
        Row(f"9. {plan.holders:,} clients holding a wait: CPU of gateway / order while they wait",
            " / ".join(f"{idle[n]:.1%}" for n in processes), "of one core", ""),
        Row(f"9. GET /orders/{{id}} ({plan.other_connections} connections) beside {plan.holders:,} waits: p50 / p99, "
            f"median of {plan.rounds}", f"{ms(p50(beside))} / {ms(p99(beside))}",
            f"without them {ms(p50(alone))} / {ms(p99(alone))}; "
            f"{statistics.median(r.ok_per_second for r in beside):,.0f}/s beside "
            f"{statistics.median(r.ok_per_second for r in alone):,.0f}/s", ""),
        Row(f"9. {plan.holders:,} waits answered after their orders' results (statements of 200, one NOTIFY each)",
            f"{woken * 1000:,.0f} ms", "from the first statement to the last answer (last round)", ""),
    ]


def leavers_rows(plan, stack):
    processes = {name: stack[name] for name in ("gateway", "order")}
    loop = asyncio.new_event_loop()
    before = after_first = None
    for wave in range(plan.leavers // plan.wave):
        order_ids = new_orders(stack, plan, plan.wave)
        connections = loop.run_until_complete(hold(stack.url, order_ids))
        until(lambda: waiting(stack, plan.wave), what="waiters (gateway, order)")
        loop.run_until_complete(leave(connections))
        until(lambda: waiting(stack, 0), timeout=30, what="waiters left (gateway, order)")
        state = {name: (rss_mb(p), gauge(stack, name, "shop_event_loop_tasks")) for name, p in processes.items()}
        before = before or state
        after_first = after_first or (state if wave == 0 else None)
        say(f"[9] blocking reads: wave {wave + 1}, {plan.wave} clients left while waiting: {state}")
    loop.close()
    return [Row(f"9. {plan.leavers:,} clients that left while waiting ({plan.wave:,} at a time): waiters left",
                "0 / 0", "gateway / order gauges after each wave", "0"),
            Row("9. ... RSS and asyncio tasks, gateway / order: after the first wave → after the last",
                " / ".join(f"{mb(after_first[n][0])} → {mb(state[n][0])}" for n in processes),
                "tasks " + " / ".join(f"{after_first[n][1]:.0f} → {state[n][1]:.0f}" for n in processes), "")]


def blocking_reads(plan: Sizes):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * plan.wave + 1024)), hard))
    with Stack(prefix="shop_bench") as stack:
        measure.seed_accounts(stack.payment_dsn, plan.users)
        rows = latency_rows(plan, stack)
        stack["payment"].stop()  # from here on nothing settles but what the benchmark finalizes itself
        rows += holders_rows(plan, stack)
        rows += leavers_rows(plan, stack)
    return rows

