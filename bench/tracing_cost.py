"""CPU per order of each process with tracing off and on, as ratios to the code without tracing, from one run.

    .venv/bin/python -m bench.tracing_cost [orders] [--rounds N]

Modes, interleaved round by round (each round starting with the next one), so that the machine's other
load falls on all of them alike:
  plain      the code just before tracing came in (the parent of the commit that added common/observability/tracing.py,
             unpacked with `git archive`): the baseline
  none       this code, OTEL_TRACES_EXPORTER=none (the default)
  otlp       this code, its hand-made spans exported over OTLP/HTTP to a receiver in this process
  zero-code  the baseline under `opentelemetry-instrument` (the Tornado, aiopg and aio-pika instrumentations,
             exported over OTLP/HTTP): only where they are installed (bench/otel-requirements.txt, see
             bench/otel_probe.py)
Each mode's figure is its median over the rounds; its ratio the median of its rounds' ratios to the first
mode's run (plain by default) of the same round."""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from http.server import ThreadingHTTPServer
from pathlib import Path

from bench.otel_probe import MODULES, Receiver, place_orders
from harness.stack import ROOT, Stack, free_port


def baseline_ref():
    added = subprocess.run(["git", "log", "--follow", "--diff-filter=A", "--format=%H", "--",
                            "common/observability/tracing.py"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    return f"{added[-1]}^" if added else "HEAD"


def unpack(ref, directory):
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)


def commands(mode, baseline_dir):
    python = sys.executable
    instrument = str(Path(python).parent / "opentelemetry-instrument")
    result = {}
    for kind, (name, args) in MODULES.items():
        command = [python, *args]
        if mode == "zero-code":
            command = ["env", f"OTEL_SERVICE_NAME={name}", instrument, *command]
        if mode in ("plain", "zero-code"):
            command = ["env", "-C", baseline_dir, *command]
        result[kind] = command
    return result


def off_hooks_us(repeat=100_000):
    """µs of CPU that tracing's hooks take per order with tracing off: the two server spans, the outbox row's
    context, two sends (request and result); the per-batch hooks are shared by up to BATCH_SIZE orders."""
    from common.observability import tracing
    off, headers = tracing.Off(), {}

    def order():
        for _ in range(2):
            with off.server("POST", "/orders", headers) as span:
                span.set_status_code(201)
        off.traceparent()
        for _ in range(2):
            with off.send("outbox_os", 1, [None]):
                pass
    return 1e6 * timeit.timeit(order, number=repeat) / repeat


def run(mode, orders, baseline_dir, endpoint):
    env = {"OTEL_TRACES_EXPORTER": "none" if mode in ("plain", "none") else "otlp", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
           "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "LOG_LEVEL": "WARNING"}
    exported = len(Receiver.spans)
    with Stack(prefix="shop_tcost", extra_env=env, commands=commands(mode, baseline_dir)) as stack:
        for process in stack.processes.values():
            process.wait_ready()
        cpu = place_orders(stack, orders, "00-" + "1" * 32 + "-" + "2" * 16 + "-01")["cpu_ms_per_order"]
    # Counted once the processes have stopped: they export what they still hold when they exit.
    return cpu, len(Receiver.spans) - exported


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("orders", type=int, nargs="?", default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="plain,none,otlp,zero-code",
                        help="comma-separated; zero-code is left out where it is not installed")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if not (Path(sys.executable).parent / "opentelemetry-instrument").exists() and "zero-code" in modes:
        modes.remove("zero-code")
    receiver = ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{receiver.server_port}"
    figures = {mode: [] for mode in modes}
    ref = baseline_ref()
    with tempfile.TemporaryDirectory(prefix="shop_baseline_") as baseline_dir:
        unpack(ref, baseline_dir)
        for round_number in range(args.rounds):
            # Each round starts with another mode: no mode always runs right after the same one.
            shift = round_number % len(modes)
            for mode in modes[shift:] + modes[:shift]:
                cpu, spans = run(mode, args.orders, baseline_dir, endpoint)
                figures[mode].append(cpu)
                print(json.dumps({"mode": mode, "cpu_ms_per_order": cpu,
                                  "spans_per_order": round(spans / args.orders, 1)}), flush=True)
                time.sleep(1)
    receiver.shutdown()
    print(f"tracing's hooks with tracing off: {off_hooks_us():.1f} µs of CPU per order")
    medians = {mode: {name: round(statistics.median(r[name] for r in runs), 2) for name in runs[0]}
               for mode, runs in figures.items()}
    # Each round's ratio to the first mode's run of the same round, then their median: the machine's load
    # drifts between rounds far more than between neighbouring runs.
    ratios = {mode: statistics.median(sum(run.values()) / sum(first.values())
                                      for run, first in zip(runs, figures[modes[0]]))
              for mode, runs in figures.items()}
    print(json.dumps({"baseline": ref, "orders": args.orders, "rounds": args.rounds, "cpu_ms_per_order": medians,
                      "ratio": {mode: round(ratio, 2) for mode, ratio in ratios.items()}}))
    print(f"{'mode':10} {'gateway':>8} {'order':>8} {'payment':>8} {'total':>8}   total / the first's, same round")
    for mode, m in medians.items():
        print(f"{mode:10} {m['gateway']:8.2f} {m['order']:8.2f} {m['payment']:8.2f} {sum(m.values()):8.2f}   "
              f"{ratios[mode]:.2f}x")


if __name__ == "__main__":
    main()
