"""The walk of one order's `amount`: from the `POST /orders` body to the debit and back to the order's final
status and the client's answer, as the running code takes it (docs/architecture.md "The walk of an amount").

`python -m harness.walk` starts the three services as real processes on fresh databases and a fresh vhost
(`harness.stack`), each with the hook in `harness/walk_hook` loaded, opens an account with 500.00, places one
order of 73.19, waits until its status is final (read from the database: a `GET` would carry the amount again)
and prints every hop of that amount through the project's code, in time order, then the count per service.
What counts as a hop: `harness/walk_hook/sitecustomize.py`.

Options: `--env KEY=VALUE` sets a service setting (e.g. `FAST_PATH=0`, `EVENT_LOOP=asyncio`); `--log FILE`
keeps the raw hops."""
import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psycopg2

from harness.stack import ROOT, Stack

AMOUNT = "73.19"
HOOK = Path(__file__).resolve().parent / "walk_hook"
FINAL = ("FINISHED", "CANCELLED")


def send(base_url: str, method: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(base_url + path, data=json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wait_final(dsn: str, order_id: int, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("SELECT status FROM orders WHERE order_id = %s", (order_id,))
            conn.rollback()
            status = cur.fetchone()[0]
            if status in FINAL:
                return status
            time.sleep(0.05)
    raise TimeoutError(f"order {order_id} still not final after {timeout} s")


def walk(settings: dict) -> tuple[list, str]:
    """(hops as (time, service, function, where, how), the order's final status)."""
    log = tempfile.NamedTemporaryFile(prefix="shop_walk_", suffix=".tsv", delete=False).name
    extra_env = {**settings, "SHOP_WALK_AMOUNT": AMOUNT, "SHOP_WALK_LOG": log, "SHOP_WALK_ROOT": str(ROOT),
                 "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")]))}
    with Stack(prefix="shop_walk", extra_env=extra_env) as stack:
        for name in ("order", "payment"):
            stack[name].wait_ready()  # the broker connected: an order placed before would go by the relay
        send(stack.url, "POST", "/payments", {"user_id": 1})
        send(stack.url, "PUT", "/payments/1", {"amount": 500})
        placed_at = time.time()  # hops before it are the start-up's (the hook's setting is in the environment)
        order_id = send(stack.url, "POST", "/orders", {"user_id": 1, "amount": float(AMOUNT)})["order_id"]
        status = wait_final(stack.order_dsn, order_id)
        time.sleep(1)  # the fast paths' follow-ups (rows marked sent, results deleted) end after the status
        services = {str(process.popen.pid): name for name, process in stack.processes.items()}
    hops = []
    for line in Path(log).read_text().splitlines():
        at, pid, function, where, how = line.split("\t")
        if float(at) >= placed_at:
            hops.append((float(at), services.get(pid, pid), function, where, how))
    os.unlink(log)
    return sorted(hops), status


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of the services, e.g. FAST_PATH=0")
    parser.add_argument("--log", help="also write the hops, tab-separated, to this file")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.env):
        parser.error("--env takes KEY=VALUE")
    hops, status = walk(dict(item.split("=", 1) for item in args.env))
    start = hops[0][0] if hops else 0
    for number, (at, service, function, where, how) in enumerate(hops, 1):
        print(f"{number:3d} {1000 * (at - start):8.1f} ms  {service:<8} {function:<45} {how:<11} {where}")
    per_service = Counter(service for _, service, *_ in hops)
    print(f"\n{len(hops)} hops, order {status}: " + ", ".join(f"{s} {n}" for s, n in per_service.items()))
    if args.log:
        Path(args.log).write_text("".join("\t".join(map(str, hop)) + "\n" for hop in hops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
