"""The benchmark's measurements. Each starts the real stack on fresh databases and a fresh vhost
(`harness.stack.Stack`) and returns table rows; memory peaks are collected along the way."""
import statistics
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace

import psycopg2.errors

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
from harness.stack import COMMANDS, ROOT, Stack, cpu_seconds, drop_database, free_port

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
    latency_rounds: int = 2  # figure 1's runs of each checkout, taking turns with `--before`'s
    profile: bool = False


SMOKE = Plan(users=50, latency_rate=20, latency_seconds=1, load_cells=((4, 50), (2, 1)), load_seconds=1,
             pgbench_clients=2, pgbench_seconds=1, backlog_orders=100, outage_seconds=1, wrk_connections=4,
             wrk_seconds=1, wrk_rounds=1, big_backlog=500, big_drain_seconds=30, settle_timeout=60, overload_slow=30,
             overload_connections=20, overload_seconds=1, overload_rounds=1, topology_rounds=1, topology_clients=4,
             topology_rate=20, latency_rounds=1)


@contextmanager
def bench_stack(plan, infra=INFRA, checkout=None, **env):
    """A fresh stack on `infra`'s servers with seeded accounts; yields (stack, {user: top-up}). With `checkout` (a
    directory, e.g. an older commit's `git worktree`), its three processes run that checkout's code."""
    with Stack(prefix="shop_bench", extra_env=env, infra=infra, commands=commands_of(checkout)) as stack:
        yield stack, measure.seed_accounts(stack.payment_dsn, plan.users)


def commands_of(checkout):
    """The stack's commands, run in `checkout` (None: this one's)."""
    if checkout is None:
        return None
    return {kind: ["env", "-C", str(checkout), *command] for kind, command in COMMANDS.items()}


@contextmanager
def checkouts(before):
    """{label: checkout directory or None for this one}: this checkout, and `before`'s (`git worktree`) if given."""
    if not before:
        yield {"this": None}
        return
    with gateway_cpu.worktree(before) as old:
        yield {"this": None, before: old}


def ratio(now, then):
    return "-" if now is None or not then else f"{now / then:.2f}×"


def settle(stack, plan, label):
    took = wait_until_settled(stack.order_dsn, plan.settle_timeout)
    if took is None:
        raise RuntimeError(f"{label}: orders still pending after {plan.settle_timeout} s; logs in {stack.log_dir}")
    return took


def peaks(stack):
    return {name: stack[name].peak_rss_mb() for name in SERVICES}


def latency(plan, before=None):
    """(1) create→final latency at a steady rate, server-side: this checkout's fast path, pooled over
    `plan.latency_rounds` runs that take turns with those of the commit `before` (if given, checked out by
    `git worktree`: same machine, same minutes), and this checkout with the poll only (one run)."""
    samples, stages, codes = {}, {}, {}
    with checkouts(before) as runs:
        for round_ in range(1, plan.latency_rounds + 1):
            for label, checkout in runs.items():
                say(f"[1/5] latency ({label}, round {round_}/{plan.latency_rounds}): {plan.latency_rate} orders/s "
                    f"for {plan.latency_seconds:.0f} s, FAST_PATH=1")
                with bench_stack(plan, checkout=checkout, FAST_PATH="1") as (stack, _):
                    got, _took = steady_orders(stack.url, plan.latency_rate, plan.latency_seconds, plan.users)
                    settle(stack, plan, "latency")
                    samples.setdefault(label, []).extend(measure.latency_samples_ms(stack.order_dsn))
                    for name, values in measure.stage_samples_ms(stack.order_dsn, stack.payment_dsn).items():
                        stages.setdefault(label, {}).setdefault(name, []).extend(values)
                    codes.setdefault(label, Counter()).update(got)
    say(f"[1/5] latency: {plan.latency_rate} orders/s for {plan.latency_seconds:.0f} s, FAST_PATH=0")
    with bench_stack(plan, FAST_PATH="0") as (stack, _):
        steady_orders(stack.url, plan.latency_rate, plan.latency_seconds, plan.users)
        settle(stack, plan, "latency")
        slow = measure.latency_samples_ms(stack.order_dsn)
    return latency_rows(plan, before, samples, stages, codes, slow)


SHARES = (("p50", 0.5, "≤ 3 ms", 0.5), ("p95", 0.95, "", None), ("p99", 0.99, "≤ 10 ms", 0.67))


def latency_rows(plan, before, samples, stages, codes, slow):
    this = codes["this"]
    others = {code: n for code, n in this.items() if code != 201}
    note = f" ({this[201]} orders in {plan.latency_rounds} run{'s' if plan.latency_rounds > 1 else ''})" + \
        (f", other: {others}" if others else "")
    rows = []
    for i, (name, share, target, most) in enumerate(SHARES):
        now = measure.percentile(samples["this"], share) if samples["this"] else None
        baseline = f"{ms(measure.percentile(slow, share) if slow else None)} poll only"
        if before:
            then = measure.percentile(samples[before], share) if samples[before] else None
            baseline = f"{ms(then)} at {before} ({ratio(now, then)}); {baseline}"
        goal = target + (f", ≤ {most}× {before}" if before and most else "")
        rows.append(Row(f"1. create→final {name} at {plan.latency_rate}/s{note if i == 0 else ''}", ms(now), baseline,
                        goal))
    for name in measure.STAGES:
        p50, p99 = measure.stage_percentiles(stages["this"]).get(name, (None, None))
        baseline = ""
        if before:
            old50, old99 = measure.stage_percentiles(stages[before]).get(name, (None, None))
            baseline = f"{ms(old50)} / {ms(old99)} at {before}"
        rows.append(Row(f"1. stage: {name} (p50 / p99)", f"{ms(p50)} / {ms(p99)}", baseline, ""))
    return rows


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


def throughput(plan, memory, profiles, before=None):
    """(2) accepted/s and finalized/s under closed-loop load, for each of `plan.load_cells`, vs pgbench on the
    same transaction (measured once, after the first); with `before`, each cell also runs that commit's code
    (`git worktree`), right after this checkout's, for its rates and CPU per order."""
    rows, tps = [], None
    with checkouts(before) as runs:
        for clients, users in plan.load_cells:
            cell = f"{clients} clients, {users:,} account{'s' if users > 1 else ''}"
            loads = {}
            for label, checkout in runs.items():
                say(f"[2/5] throughput ({label}): wrk, {cell}, POST /orders for {plan.load_seconds:.0f} s")
                with bench_stack(replace(plan, users=users), checkout=checkout) as (stack, top_ups):
                    load = loads[label] = load_run(stack, plan, clients, users,
                                                   profiles if not rows and checkout is None else None)
                    if checkout is None:
                        memory[f"2. throughput, {cell}"] = peaks(stack)
                    # Orders final is not yet the end: the Payments outbox deletes a row once the broker confirmed it.
                    wait_until_settled(stack.order_dsn, plan.settle_timeout, payment_db=stack.payment_dsn)
                    load["invariants"] = invariants(stack, top_ups, checkout)
                    if checkout is None:
                        tps = tps or pgbench_baseline(plan, stack)
            rows += throughput_rows(plan, cell, loads["this"], tps)
            if before:
                rows += comparison_rows(cell, before, loads["this"], loads[before])
    return rows


def throughput_rows(plan, cell, load, tps):
    failed = load["result"].status_errors + load["result"].socket_errors
    errors = f", {failed} errors" if failed else ""
    accepted, finalized = load["result"].ok_per_second, load["finalized"]
    return [
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
            f"{load['drain']:.1f} s; invariants {load['invariants']})", per_s(finalized),
            f"({finalized / accepted:.0%} of accepted)", "≥ 1,000/s, the backlog not growing"),
    ]


def comparison_rows(cell, before, now, then):
    """This checkout's load run beside `before`'s: rates, and CPU per order of the three processes together."""
    cpu_now, cpu_then = sum(now["cpu"].values()), sum(then["cpu"].values())
    return [
        Row(f"2. accepted / finalized, {cell}, this vs {before}",
            f"{per_s(now['result'].ok_per_second)} / {per_s(now['finalized'])}",
            f"{per_s(then['result'].ok_per_second)} / {per_s(then['finalized'])} at {before} "
            f"({ratio(now['result'].ok_per_second, then['result'].ok_per_second)} / "
            f"{ratio(now['finalized'], then['finalized'])}; invariants {then['invariants']})", ""),
        Row(f"2. CPU per accepted order, gateway + order + payment, {cell}", f"{cpu_now:.2f} ms",
            f"{cpu_then:.2f} ms at {before} ({ratio(cpu_now, cpu_then)})", f"≤ 0.75× {before}"),
    ]


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
    packed = [published_rows_per_message(stack[name], queue)
              for name, queue in (("order", ORDER_REQUESTS), ("payment", PAYMENT_RESULTS))]
    backlog = pending_count(stack.order_dsn)
    say(f"  {result.ok_per_second:.0f} accepted/s, {finalized:.0f} finalized/s, {backlog} pending at the end")
    return dict(result=result, finalized=finalized, cpu=cpu, packed=packed, backlog=backlog,
                drain=settle(stack, plan, "throughput"))


def invariants(stack, top_ups, checkout):
    """PASS or FAIL; for an older commit's services (`--before`) whose schema the checker does not know (a ledger
    without the columns it reads), "not checked"."""
    try:
        return "PASS" if check_invariants(stack.order_dsn, stack.payment_dsn, top_ups).ok else "FAIL"
    except psycopg2.errors.UndefinedColumn:
        if checkout is None:
            raise
        return "not checked (an older schema)"


def published_rows_per_message(process, queue):
    """Rows per message `process` published to `queue`, or None where it has no admin port serving /metrics (an
    older commit's services, run by `--before`, may not)."""
    try:
        return rows_per_message(scrape(process), queue)
    except OSError:  # (urllib's URLError among them)
        return None


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
