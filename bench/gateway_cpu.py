"""`python -m bench.gateway_cpu [--before REV] [--rounds N] [--seconds S]`: the gateway's own CPU and rate per
proxied `GET /orders/1`, against a stub backend that answers a fixed order without a database (so the figure is the
gateway's, whatever PostgreSQL is doing on a shared machine), beside nginx in front of the same stub.

Gateways measured in one run, taking turns: this checkout's (`python gateway.py`, forwarding on
`proxy.http_client.KeepAliveClient`), the same gateway forwarding on Tornado's own `SimpleAsyncHTTPClient`
(`bench.tornado_client_gateway`: what the hand-written client must beat to be worth its code) and, with
`--before REV`, the gateway of an older commit, checked out for the run with `git worktree` and removed after
(e.g. `--before HEAD~20`): a before/after comparison measures the old code without the product shipping it."""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager, nullcontext
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
GATEWAY = ["gateway.py"]
TORNADO_CLIENT_GATEWAY = ["-m", "bench.tornado_client_gateway"]


@contextmanager
def worktree(revision):
    """A checkout of `revision` in a temporary directory (`git worktree`), removed on leaving."""
    path = Path(tempfile.mkdtemp(prefix="shop_bench_before_")) / "checkout"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), revision], check=True,
                   capture_output=True, text=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False,
                       capture_output=True)
        path.parent.rmdir()


def start_gateway(checkout, command, backend_port, **env):
    """`python <command>` in `checkout`, forwarding both services to the stub on `backend_port`:
    (process, its URL) once its `/health` answers."""
    port = free_port()
    backend = f"http://127.0.0.1:{backend_port}"
    process = subprocess.Popen([sys.executable, *command], cwd=checkout, env={
        "PATH": "/usr/bin:/bin", "GATEWAY_PORT": str(port), "ORDER_SVC_URL": backend, "PAYMENT_SVC_URL": backend,
        "LOG_LEVEL": "WARNING", "GATEWAY_ADMIN_PORT": "0", **env})
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{' '.join(command)} in {checkout} did not start")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", metavar="REV", help="an older commit whose gateway to measure beside this one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    with worktree(args.before) if args.before else nullcontext() as before:
        gateways = {"gateway": (ROOT, GATEWAY), "gateway on Tornado's simple client": (ROOT, TORNADO_CLIENT_GATEWAY)}
        if before:
            gateways[f"gateway of {args.before}"] = (before, GATEWAY)
        rates, cpu = measure(gateways, args)
    print(table(args, rates, cpu, list(gateways)))
    return 0


def measure(gateways, args):
    """({target: [requests/s per round]}, {gateway: [µs of its CPU per request per round]}): the gateways and
    nginx take turns, `args.rounds` times: on a shared machine the load from elsewhere changes by the minute."""
    stub_port = free_port()
    stub = subprocess.Popen([sys.executable, "-c", STUB, str(stub_port)])
    started = {}
    try:
        for name, (checkout, command) in gateways.items():
            started[name] = start_gateway(checkout, command, stub_port)
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
    return rates, cpu


def table(args, rates, cpu, gateways):
    rate = {name: statistics.median(values) for name, values in rates.items()}
    per_request = {name: statistics.median(values) for name, values in cpu.items()}
    lines = [f"Proxied GET /orders/1 (stub backend), wrk {args.connections} connections, "
             f"median of {args.rounds} rounds of {args.seconds:.0f} s", "",
             "| gateway | CPU per request | vs gateway | rate | vs nginx |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {per_request[name]:.0f} µs | {per_request[name] / per_request['gateway']:.0%} | "
              f"{per_s(rate[name])} | {rate[name] / rate['nginx']:.2f}× |" for name in gateways]
    lines.append(f"| nginx, one worker | | | {per_s(rate['nginx'])} | 1.00× |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
