"""(6) Overload: slow connections opened and closed, then wrk with 1,000 connections on
`GET /orders/{id}` for 10 s; the 503s and the answers slower than 2 s counted, for the gateway and for nginx in
front of the same Order Service (same run, taking turns)."""
import socket
import time
from urllib.parse import urlsplit

from bench import measure, tools
from bench.progress import say
from bench.table import Row, per_s
from harness.stack import free_port

# Seconds the slow connections are held before they are closed (the issue found them all still open after 5).
HOLD_SECONDS = 5


def open_slow_connections(url, count):
    """`count` connections to `url` that each sent the start of a request and stopped (sockets that failed to
    connect are left out: a target refusing them is what is being measured)."""
    parts = urlsplit(url)
    held = []
    for _ in range(count):
        try:
            sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
            sock.sendall(b"GET /orders/1 HTTP/1.1\r\nHost: shop\r\nX-Slow: ")
        except OSError:
            continue
        held.append(sock)
    return held


def attack(url, plan):
    """Slow connections opened, held and closed, then the wrk burst; returns (connections held, WrkResult)."""
    held = open_slow_connections(url, plan.overload_slow)
    time.sleep(HOLD_SECONDS)
    for sock in held:
        sock.close()
    return len(held), tools.wrk(url + "/orders/1", plan.overload_connections, plan.overload_seconds,
                                count_503=True)


def overload(plan, bench_stack):
    with bench_stack(plan) as (stack, _):
        measure.insert_backlog(stack.order_dsn, 1, plan.users)
        direct = stack["order"].health_url.rsplit("/", 1)[0]
        results = {}
        with tools.nginx_proxy(free_port(), direct.split("//")[1]) as nginx:
            for round_ in range(1, plan.overload_rounds + 1):
                for name, url in (("gateway", stack.url), ("nginx", nginx)):
                    say(f"[6] overload round {round_}/{plan.overload_rounds}, {name}: {plan.overload_slow:,} slow "
                        f"connections for {HOLD_SECONDS} s, closed, then wrk {plan.overload_connections:,} "
                        f"connections for {plan.overload_seconds:.0f} s")
                    held, result = attack(url, plan)
                    say(f"  {held} slow connections held; {result.ok_per_second:.0f}/s, {result.status_503} × 503, "
                        f"{result.over_2s} over 2 s, {result.timeouts} timeouts")
                    results.setdefault(name, []).append(result)
    return rows(plan, results)


def rows(plan, results):
    def summary(result):
        return (f"{per_s(result.ok_per_second)}, {result.status_503:,} × 503, {result.over_2s:,} over 2 s, "
                f"{result.timeouts} timed out (p99 {result.latency_p99_ms / 1000:.2f} s)")
    out = []
    for round_, (gateway, nginx) in enumerate(zip(results["gateway"], results["nginx"]), 1):
        out.append(Row(f"6. overload round {round_}: GET /orders/{{id}}, wrk {plan.overload_connections:,} "
                       f"connections for {plan.overload_seconds:.0f} s after {plan.overload_slow:,} slow ones closed",
                       f"gateway {summary(gateway)}",
                       f"nginx {summary(nginx)}; gateway {gateway.ok_per_second / nginx.ok_per_second:.2f}× nginx",
                       "no 503"))
    return out
