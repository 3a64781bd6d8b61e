"""(8) What authentication costs: the same closed-loop `POST /orders` load and the same `GET /orders/{id}`
through the gateway with AUTH_MODE=off and AUTH_MODE=jwt (a token per user from the development issuer, each
verified by the service the first time and then remembered until it expires), taking turns `wrk_rounds` times;
each figure is the median of its rounds."""
import statistics
import tempfile
from pathlib import Path

from bench import measure, tools
from bench.progress import say
from bench.scenarios import SERVICES, bench_stack, settle
from bench.table import Row, per_s
from harness.issuer import DevIssuer

MODES = ("off", "jwt")


def tokens_file(issuer, users, path):
    """A file at `path` of `users` tokens, user u's on line u (the admin's alone when `users` is 0)."""
    tokens = [issuer.token(user) for user in range(1, users + 1)] if users else [issuer.token(admin=True)]
    path.write_text("\n".join(tokens) + "\n")
    return path


def order_load(plan, env, tokens, clients, users):
    """Accepted orders/s and CPU ms per accepted order of each process, on a fresh stack."""
    with bench_stack(plan, **env) as (stack, _):
        for name in ("order", "payment"):
            stack[name].wait_ready()
        cpu = {name: stack[name].cpu_seconds() for name in SERVICES}
        result = tools.wrk(stack.url + "/orders", clients, plan.load_seconds, post=True, users=users,
                           tokens_file=tokens)
        accepted = max(result.requests - result.status_errors, 1)
        cpu = {name: (stack[name].cpu_seconds() - cpu[name]) * 1000 / accepted for name in SERVICES}
        settle(stack, plan, "authentication")
    if result.status_errors:
        raise RuntimeError(f"{result.status_errors} refused or failed answers with AUTH_MODE={env['AUTH_MODE']}")
    return result.ok_per_second, cpu


def gateway_rate(plan, env, tokens):
    """GET /orders/1 through the gateway: requests/s and the gateway's CPU µs per request."""
    with bench_stack(plan, **env) as (stack, _):
        stack["order"].wait_ready()
        measure.insert_backlog(stack.order_dsn, 1, plan.users)
        before = stack["gateway"].cpu_seconds()
        result = tools.wrk(stack.url + "/orders/1", plan.wrk_connections, plan.wrk_seconds, tokens_file=tokens)
        if result.status_errors:
            raise RuntimeError(f"{result.status_errors} failed GETs with AUTH_MODE={env['AUTH_MODE']}")
        return result.ok_per_second, (stack["gateway"].cpu_seconds() - before) * 1e6 / max(result.requests, 1)


def auth_cost(plan):
    clients, users = plan.load_cells[0]
    rates, cpu, gets = {m: [] for m in MODES}, {m: [] for m in MODES}, {m: [] for m in MODES}
    with DevIssuer(ttl=3600) as issuer, tempfile.TemporaryDirectory(prefix="bench_tokens_") as directory:
        per_user = tokens_file(issuer, users, Path(directory) / "users")
        admin = tokens_file(issuer, 0, Path(directory) / "admin")
        env = {"off": {"AUTH_MODE": "off"}, "jwt": issuer.env()}
        for round_ in range(1, plan.wrk_rounds + 1):
            for mode in MODES:
                say(f"[8] authentication: round {round_}/{plan.wrk_rounds}, AUTH_MODE={mode}, wrk POST /orders "
                    f"{clients} clients, {users:,} users, {plan.load_seconds:.0f} s; GET /orders/1")
                rate, used = order_load(plan, env[mode], per_user if mode == "jwt" else "", clients, users)
                rates[mode].append(rate)
                cpu[mode].append(sum(used.values()))
                gets[mode].append(gateway_rate(plan, env[mode], admin if mode == "jwt" else ""))
    rate = {m: statistics.median(v) for m, v in rates.items()}
    per_order = {m: statistics.median(v) for m, v in cpu.items()}
    get_rate = {m: statistics.median(r for r, _ in v) for m, v in gets.items()}
    get_cpu = {m: statistics.median(c for _, c in v) for m, v in gets.items()}
    return [
        Row(f"8. CPU per accepted order, 3 processes, AUTH_MODE=jwt / off ({clients} clients, {users:,} users, "
            f"median of {plan.wrk_rounds})", f"{per_order['jwt']:.2f} / {per_order['off']:.2f} ms "
            f"({per_order['jwt'] / per_order['off']:.2f}×)",
            f"accepted {per_s(rate['jwt'])} / {per_s(rate['off'])}", "≤ 1.10×"),
        Row("8. GET /orders/{id} through the gateway, AUTH_MODE=jwt / off",
            f"{per_s(get_rate['jwt'])} / {per_s(get_rate['off'])} ({get_rate['jwt'] / get_rate['off']:.2f}×)",
            f"gateway CPU {get_cpu['jwt']:.0f} / {get_cpu['off']:.0f} µs per request", ""),
    ]
