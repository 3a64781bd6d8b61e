"""`python -m bench.gateway_cpu [--before DIR] [--rounds N] [--seconds S]`: the gateway's own CPU per proxied
`GET /orders/1`, against a stub backend that answers a fixed order without a database (so the figure is the
gateway's, whatever PostgreSQL is doing on a shared machine), beside nginx in front of the same stub.

Gateways measured in one run, taking turns: this checkout (GATEWAY_PROXY=direct, and =handler: a Tornado
RequestHandler per request) and, with `--before DIR`, the gateway of another checkout, e.g. the code before
issue 14: `mkdir /tmp/before && git archive 14c7fb5 | tar -x -C /tmp/before`, then
`python -m bench.gateway_cpu --before /tmp/before`."""
import argparse
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench import tools
from bench.table import per_s
from harness.stack import ROOT, cpu_seconds, free_port

STUB = """
import sys, tornado.ioloop, tornado.web
BODY = (b'{"status": "Success", "message": "Order 1 is FINISHED.", "order": {"order_id": 1, "user_id": 1, '
        b'"amount": 5.00, "description": "", "status": "FINISHED"}}')
class Order(tornado.web.RequestHandler):
    def get(self, *_):
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(BODY)
tornado.web.Application([(r"/.*", Order)], log_function=lambda handler: None).listen(int(sys.argv[1]))
tornado.ioloop.IOLoop.current().start()
"""


def start_gateway(checkout, backend_port, **env):
    port = free_port()
    backend = f"http://127.0.0.1:{backend_port}"
    process = subprocess.Popen([sys.executable, "gateway.py"], cwd=checkout, env={
        "PATH": "/usr/bin:/bin", "GATEWAY_PORT": str(port), "ORDER_SVC_URL": backend, "PAYMENT_SVC_URL": backend,
        "LOG_LEVEL": "WARNING", "GATEWAY_ADMIN_PORT": "0", **env})
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the gateway in {checkout} did not start")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_cpu", description=__doc__)
    parser.add_argument("--before", help="another checkout whose gateway.py to measure beside this one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    stub_port = free_port()
    stub = subprocess.Popen([sys.executable, "-c", STUB, str(stub_port)])
    gateways = {"gateway (direct)": (ROOT, {}), "gateway (handlers)": (ROOT, {"GATEWAY_PROXY": "handler"})}
    if args.before:
        gateways[f"gateway of {args.before}"] = (Path(args.before), {})
    started = {}
    try:
        for name, (checkout, env) in gateways.items():
            started[name] = start_gateway(checkout, stub_port, **env)
        rates, cpu = {}, {}
        with tools.nginx_proxy(free_port(), f"127.0.0.1:{stub_port}") as nginx:
            targets = {**{name: url for name, (_, url) in started.items()}, "nginx": nginx}
            for _ in range(args.rounds):
                for name, url in targets.items():
                    process = started[name][0] if name in started else None
                    before = cpu_seconds(process.pid) if process else 0
                    result = tools.wrk(url + "/orders/1", args.connections, args.seconds)
                    rates.setdefault(name, []).append(result.ok_per_second)
                    if process:
                        cpu.setdefault(name, []).append((cpu_seconds(process.pid) - before) * 1e6 / result.requests)
    finally:
        for process, _ in started.values():
            process.terminate()
        stub.terminate()
    print(table(args, rates, cpu, list(started)))
    return 0


def table(args, rates, cpu, gateways):
    rate = {name: statistics.median(values) for name, values in rates.items()}
    per_request = {name: statistics.median(values) for name, values in cpu.items()}
    last = gateways[-1]  # the baseline: --before if given, else the handlers
    lines = [f"CPU per proxied GET /orders/1 (stub backend), wrk {args.connections} connections, "
             f"median of {args.rounds} rounds of {args.seconds:.0f} s", "",
             "| gateway | CPU per request | vs " + last + " | rate | vs nginx |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {per_request[name]:.0f} µs | {per_request[name] / per_request[last]:.0%} | "
              f"{per_s(rate[name])} | {rate[name] / rate['nginx']:.2f}× |" for name in gateways]
    lines.append(f"| nginx, one worker | | | {per_s(rate['nginx'])} | 1.00× |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
