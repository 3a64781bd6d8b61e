"""The benchmark's measurements. Each starts the real stack on fresh databases and a fresh vhost
(`harness.stack.Stack`) and returns table rows; memory peaks are collected along the way."""
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

from bench import gateway_cpu, measure, tools
from bench.profile import Profiler
from bench.progress import say, wait
from bench.steady import steady_orders
from bench.table import Row, mb, ms, per_s
from common.broker.messages import ORDER_REQUESTS, PAYMENT_RESULTS
from common.db.database import schema_section
from common.runtime.config import load_settings
from harness.infra import INFRA
from harness.invariants import check_invariants, pending_count, wait_until_settled
from harness.metrics import rows_per_message, sample_total, scrape
from harness.stack import ROOT, Stack, cpu_seconds, drop_database, free_port

SERVICES = ("gateway", "order", "payment")


@dataclass(frozen=True)
class Plan:
    """Sizes and durations; `SMOKE` shrinks them so that CI runs every code path in seconds."""
    users: int = 1000
    latency_rate: int = 100
    latency_seconds: float = 30
    # (wrk connections, funded accounts the orders cycle over) of each throughput run: one hot account
    # serialises settling, so it is measured beside 1,000.
    load_cells: tuple = ((64, 1000), (16, 1000), (64, 1), (16, 1))
    load_seconds: float = 30
    pgbench_clients: int = 16
    pgbench_seconds: float = 15
    backlog_orders: int = 10_000
    outage_seconds: float = 60
    wrk_connections: int = 32
    wrk_seconds: float = 5
    wrk_rounds: int = 3
    big_backlog: int = 100_000
    overload_slow: int = 3000
    overload_connections: int = 1000
    overload_seconds: float = 10
    overload_rounds: int = 2
    big_drain_seconds: float = 120
    settle_timeout: float = 600
    topology_rounds: int = 2
    topology_clients: int = 64
    topology_rate: int = 30  # what the 3-node cluster on this 2-core machine sustains beside others' load
    profile: bool = False


SMOKE = Plan(users=50, latency_rate=20, latency_seconds=1, load_cells=((4, 50), (2, 1)), load_seconds=1,
             pgbench_clients=2, pgbench_seconds=1, backlog_orders=100, outage_seconds=1, wrk_connections=4,
             wrk_seconds=1, wrk_rounds=1, big_backlog=500, big_drain_seconds=30, settle_timeout=60, overload_slow=30,
             overload_connections=20, overload_seconds=1, overload_rounds=1, topology_rounds=1, topology_clients=4,
             topology_rate=20)


@contextmanager
def bench_stack(plan, infra=INFRA, **env):
    """A fresh stack on `infra`'s servers with seeded accounts; yields (stack, {user: top-up})."""
    with Stack(prefix="shop_bench", extra_env=env, infra=infra) as stack:
        yield stack, measure.seed_accounts(stack.payment_dsn, plan.users)


def settle(stack, plan, label):
    took = wait_until_settled(stack.order_dsn, plan.settle_timeout)
    if took is None:
        raise RuntimeError(f"{label}: orders still pending after {plan.settle_timeout} s; logs in {stack.log_dir}")
    return took


def peaks(stack):
    return {name: stack[name].peak_rss_mb() for name in SERVICES}


def latency(plan):
    """(1) create→final latency at a steady rate, fast path vs poll only."""
    results = {}
    for fast in ("1", "0"):
        say(f"[1/5] latency: {plan.latency_rate} orders/s for {plan.latency_seconds:.0f} s, FAST_PATH={fast}")
        with bench_stack(plan, FAST_PATH=fast) as (stack, _):
            codes, _took = steady_orders(stack.url, plan.latency_rate, plan.latency_seconds, plan.users)
            settle(stack, plan, "latency")
            results[fast] = measure.latency_ms(stack.order_dsn), codes
            if fast == "1":
                stages = measure.stage_latencies_ms(stack.order_dsn, stack.payment_dsn)
    (fast, codes), (slow, _) = results["1"], results["0"]
    others = {code: n for code, n in codes.items() if code != 201}
    note = f" ({codes[201]} orders)" + (f", other: {others}" if others else "")
    return [Row(f"1. create→final {name} at {plan.latency_rate}/s{note if i == 0 else ''}", ms(fast[i]),
                f"{ms(slow[i])} poll only", target)
            for i, (name, target) in enumerate((("p50", "≤ 3 ms"), ("p95", ""), ("p99", "≤ 10 ms")))] + \
        [Row(f"1. stage: {name} (p50 / p99)", f"{ms(p50)} / {ms(p99)}", "", "") for name, (p50, p99) in stages.items()]


def pgbench_baseline(plan, stack):
    """pgbench running the order transaction on a scratch database with the Order Service's schema."""
    # As the harness's administrator: the Order Service's own role may not create databases.
    dsn = stack.infra.dsn(f"{stack.run_id}_pgbench")
    measure.run_sql(stack.infra.pg_admin_dsn, f'CREATE DATABASE "{stack.run_id}_pgbench"')
    try:
        measure.run_sql(dsn, schema_section("order_svc"))
        say(f"[2/5] pgbench: order transaction, {plan.pgbench_clients} clients for {plan.pgbench_seconds:.0f} s")
        return tools.pgbench(dsn, plan.pgbench_clients, plan.pgbench_seconds)
    finally:
        drop_database(f"{stack.run_id}_pgbench")


def throughput(plan, memory, profiles):
    """(2) accepted/s and finalized/s under closed-loop load, for each of `plan.load_cells`, vs pgbench on the
    same transaction (measured once, after the first)."""
    rows, tps = [], None
    for clients, users in plan.load_cells:
        cell = f"{clients} clients, {users:,} account{'s' if users > 1 else ''}"
        say(f"[2/5] throughput: wrk, {cell}, POST /orders for {plan.load_seconds:.0f} s")
        with bench_stack(replace(plan, users=users)) as (stack, top_ups):
            load = load_run(stack, plan, clients, users, profiles if not rows else None)
            memory[f"2. throughput, {cell}"] = peaks(stack)
            # Orders final is not yet the end: the Payments outbox deletes a row once the broker confirmed it.
            wait_until_settled(stack.order_dsn, plan.settle_timeout, payment_db=stack.payment_dsn)
            invariants = "PASS" if check_invariants(stack.order_dsn, stack.payment_dsn, top_ups).ok else "FAIL"
            tps = tps or pgbench_baseline(plan, stack)
        failed = load["result"].status_errors + load["result"].socket_errors
        errors = f", {failed} errors" if failed else ""
        accepted, finalized = load["result"].ok_per_second, load["finalized"]
        rows += [
            Row(f"2. POST /orders accepted via gateway, {cell} (client p50 {ms(load['result'].latency_p50_ms)}"
                f"{errors})", per_s(accepted), f"{per_s(tps)} pgbench -c{plan.pgbench_clients} ({accepted / tps:.0%})",
                "≥ 1,000/s"),
            Row(f"2. CPU per accepted order, {cell}: gateway / order / payment",
                " / ".join(f"{load['cpu'][name]:.2f} ms" for name in SERVICES),
                "(what each process would need on its own core)"),
            Row(f"2. rows per message published, {cell}: {ORDER_REQUESTS} / {PAYMENT_RESULTS}",
                " / ".join("-" if n is None else f"{n:.1f}" for n in load["packed"]),
                f"ENTRIES_PER_MESSAGE={load_settings().entries_per_message}"),
            Row(f"2. orders finalized during the load, {cell} (then {load['backlog']} pending, drained in "
                f"{load['drain']:.1f} s; invariants {invariants})", per_s(finalized),
                f"({finalized / accepted:.0%} of accepted)", "≥ 1,000/s, the backlog not growing"),
        ]
    return rows


def load_run(stack, plan, clients, users, profiles):
    """One closed-loop wrk run on `stack`: its result, finalized/s during it, CPU ms per accepted order of each
    service, the orders pending when it stopped and the seconds they took to settle."""
    profiler = profiles is not None and plan.profile and \
        Profiler({s: stack[s] for s in SERVICES}, max(plan.load_seconds - 2, 1))
    cpu = {name: stack[name].cpu_seconds() for name in SERVICES}
    start = measure.db_now(stack.order_dsn)
    result = tools.wrk(stack.url + "/orders", clients, plan.load_seconds, post=True, users=users)
    end = measure.db_now(stack.order_dsn)
    accepted = result.requests - result.status_errors
    cpu = {name: (stack[name].cpu_seconds() - cpu[name]) * 1000 / max(accepted, 1) for name in SERVICES}
    if profiler:
        profiles.append(profiler.report())
    finalized = measure.finalized_between(stack.order_dsn, start, end) / (end - start).total_seconds()
    packed = [rows_per_message(scrape(stack[name]), queue)
              for name, queue in (("order", ORDER_REQUESTS), ("payment", PAYMENT_RESULTS))]
    backlog = pending_count(stack.order_dsn)
    say(f"  {result.ok_per_second:.0f} accepted/s, {finalized:.0f} finalized/s, {backlog} pending at the end")
    return dict(result=result, finalized=finalized, cpu=cpu, packed=packed, backlog=backlog,
                drain=settle(stack, plan, "throughput"))


def drain_cpu_seconds(stack):
    """CPU seconds used so far by the two services, RabbitMQ and PostgreSQL."""
    return {**{name: stack[name].cpu_seconds() for name in ("order", "payment")}, **measure.server_cpu_seconds()}


def backlog(plan, memory):
    """(3) a backlog built while Payments is down: publishes during the outage, then time to drain it."""
    with bench_stack(plan) as (stack, _):
        stack["payment"].stop()
        say(f"[3/5] backlog: {plan.backlog_orders} orders with Payments stopped")
        tools.wrk(stack.url + "/orders", 64, 600, post=True, users=plan.users,
                  limit_per_thread=plan.backlog_orders // 2,
                  until=lambda: measure.order_count(stack.order_dsn) >= plan.backlog_orders)
        time.sleep(1)  # requests in flight when wrk stopped still commit
        orders = measure.order_count(stack.order_dsn)
        wait(plan.outage_seconds, f"outage with {orders} pending orders")
        published = sample_total(scrape(stack["order"]), "shop_outbox_rows_published_total", queue=ORDER_REQUESTS) or 0
        messages = measure.queue_depth(stack.vhost, ORDER_REQUESTS)
        say(f"  {published:.0f} rows in {messages} messages in {ORDER_REQUESTS}; starting Payments")
        started = time.monotonic()
        stack.restart("payment")
        ready = time.monotonic() - started
        before = drain_cpu_seconds(stack)
        settle(stack, plan, "backlog")
        drained = time.monotonic() - started
        cpu = {name: (seconds - before[name]) * 1000 / orders for name, seconds in drain_cpu_seconds(stack).items()}
        memory["3. backlog"] = peaks(stack)
    return [
        Row(f"3. drain {orders:,} orders after Payments starts (incl. {ready:.1f} s start-up)", f"{drained:.1f} s",
            f"{orders / drained:,.0f} orders/s", "≤ 2.5 s"),
        Row("3. CPU per drained order: order / payment / RabbitMQ / PostgreSQL",
            " / ".join(f"{cpu[name]:.2f} ms" for name in ("order", "payment", "RabbitMQ", "PostgreSQL")),
            "(two cores: 2 s of CPU per second)", ""),
        Row(f"3. rows published to {ORDER_REQUESTS} per pending order, {plan.outage_seconds:.0f} s outage",
            f"{published / orders:.2f}", f"{published:,.0f} rows in {messages:,} messages", "≤ 3"),
    ]


TORNADO = "gateway on Tornado's client"


def gateway_overhead(plan):
    """(4) GET /orders/{id} throughput: direct, through the gateway (on uvloop and on asyncio's own loop; and
    forwarding on Tornado's own `SimpleAsyncHTTPClient` instead of `proxy.http_client`, what the hand-written client
    must beat), through nginx; and the CPU each gateway spends per proxied request. The targets take turns,
    `wrk_rounds` times, and each figure is the median of its rounds: on a shared machine the load from elsewhere
    changes by the minute. A comparison with an older commit is `python -m bench.gateway_cpu --before REV`."""
    with bench_stack(plan) as (stack, _):
        measure.insert_backlog(stack.order_dsn, 1, plan.users)
        direct = stack["order"].health_url.rsplit("/", 1)[0]
        tornado_client, tornado_client_url = gateway_cpu.start_gateway(ROOT, gateway_cpu.TORNADO_CLIENT_GATEWAY,
                                                                       int(direct.rsplit(":", 1)[1]))
        gateways = {"gateway": stack.url,
                    "gateway on asyncio": stack.add_gateway("gateway_asyncio", EVENT_LOOP="asyncio"),
                    TORNADO: tornado_client_url}
        used_cpu = {"gateway": stack["gateway"].cpu_seconds, "gateway on asyncio": stack["gateway_asyncio"].cpu_seconds,
                    TORNADO: lambda: cpu_seconds(tornado_client.pid)}
        rates, cpu = {}, {}
        try:
            with tools.nginx_proxy(free_port(), direct.split("//")[1]) as nginx:
                targets = {"direct": direct, **gateways, "nginx": nginx}
                for round_ in range(1, plan.wrk_rounds + 1):
                    say(f"[4/5] gateway overhead: round {round_}/{plan.wrk_rounds}, wrk GET /orders/1 on "
                        f"{', '.join(targets)}, {plan.wrk_connections} connections, {plan.wrk_seconds:.0f} s each")
                    for name, base in targets.items():
                        before = used_cpu[name]() if name in used_cpu else None
                        result = tools.wrk(base + "/orders/1", plan.wrk_connections, plan.wrk_seconds)
                        rates.setdefault(name, []).append(result.ok_per_second)
                        if before is not None:
                            cpu.setdefault(name, []).append((used_cpu[name]() - before) * 1e6 / max(result.requests, 1))
        finally:
            tornado_client.terminate()
            tornado_client.wait(10)
    rate = {name: statistics.median(values) for name, values in rates.items()}
    per_request = {name: statistics.median(values) for name, values in cpu.items()}
    share = lambda name: f"{per_s(rate[name])} ({rate[name] / rate['direct']:.0%})"  # noqa: E731
    return [Row(f"4. GET /orders/{{id}} through the gateway (uvloop), median of {plan.wrk_rounds} rounds",
                f"{share('gateway')}, {rate['gateway'] / rate['nginx']:.2f}× nginx",
                f"{per_s(rate['direct'])} direct; nginx {share('nginx')}; gateway on asyncio loop "
                f"{share('gateway on asyncio')}; on Tornado's client {share(TORNADO)}, "
                f"{rate[TORNADO] / rate['nginx']:.2f}× nginx", "≥ 0.9× nginx"),
            Row("4. gateway CPU per proxied GET: uvloop / asyncio loop / uvloop on Tornado's SimpleAsyncHTTPClient",
                " / ".join(f"{per_request[name]:.0f} µs" for name in gateways),
                f"{per_request['gateway'] / per_request[TORNADO]:.0%} of Tornado's client's; rate "
                f"{rate['gateway'] / rate[TORNADO]:.2f}× it", "< 100% (else the hand-written client goes)")]


def big_backlog(plan, memory):
    """(5) memory with a large backlog: orders written while Payments is down, then drained."""
    with bench_stack(plan) as (stack, _):
        stack["payment"].stop()
        say(f"[5/5] memory: {plan.big_backlog:,} pending orders, Payments stopped")
        measure.insert_backlog(stack.order_dsn, plan.big_backlog, plan.users)
        started = time.monotonic()
        while measure.unsent_count(stack.order_dsn):
            if time.monotonic() - started > plan.settle_timeout:
                raise RuntimeError("the Order Service did not publish the backlog")
            time.sleep(1)
        say(f"  backlog published in {time.monotonic() - started:.1f} s; starting Payments")
        started = time.monotonic()
        stack.restart("payment")
        # Memory is the point here, not speed (figure 3 is about that): drain for a bounded time.
        took = wait_until_settled(stack.order_dsn, plan.big_drain_seconds)
        drained = plan.big_backlog - pending_count(stack.order_dsn)
        how = f"drained in {took:.0f} s" if took is not None else \
            f"{drained:,} drained in the first {time.monotonic() - started:.0f} s"
        memory[f"5. {plan.big_backlog:,}-order backlog ({how})"] = peaks(stack)
    return []


def memory_rows(memory):
    return [Row(f"5. peak RSS gateway / order / payment, run {run}",
                " / ".join(mb(p[s]) for s in SERVICES), "", "≤ 150 MB each") for run, p in memory.items()]
