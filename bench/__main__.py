"""`python -m bench [--smoke] [--only 1,2,...]`: run the benchmark and print one table (progress on stderr)."""
import argparse
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime

from bench import auth_cost, blocking_reads, measure, notify_cost, overload, scenarios, tools, topologies
from bench.progress import say
from bench.table import Row, render


def machine():
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor())
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}"


def load():
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def git_commit():
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds per figure (CI)")
    parser.add_argument("--only", default="1,2,3,4,5,6,8,9,10",
                        help="comma-separated figures to run (default all but 7)")
    parser.add_argument("--topologies", default="classic,quorum",
                        help="figure 7 (only with --only 7): comma-separated topologies of bench/topologies.py, "
                             "e.g. classic,quorum,rabbitmq-cluster,pg-ha (start the clusters first)")
    parser.add_argument("--profile", action="store_true", help="py-spy the services during the throughput figure")
    parser.add_argument("--before", metavar="REV",
                        help="figures 1 and 2 also run this older commit's services (checked out by git worktree "
                             "for the run), taking turns with this checkout's, and give each figure's ratio")
    parser.add_argument("--load-cells", metavar="CxU,...",
                        help="figure 2's runs as clients x funded accounts, e.g. 64x1000,16x1 (default: "
                             + ",".join(f"{c}x{u}" for c, u in scenarios.Plan().load_cells) + ")")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every stack still drops its databases and vhost.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = replace(scenarios.SMOKE if args.smoke else scenarios.Plan(), profile=args.profile)
    if args.load_cells:
        plan = replace(plan, load_cells=tuple(tuple(int(n) for n in cell.split("x"))
                                              for cell in args.load_cells.split(",")))
    only = {int(n) for n in args.only.split(",")}
    tools.ensure_installed()
    say(f"start: {load()}")
    rows, memory, profiles = [], {}, []
    steps = [(1, lambda: scenarios.latency(plan, args.before)),
             (2, lambda: scenarios.throughput(plan, memory, profiles, args.before)),
             (3, lambda: scenarios.backlog(plan, memory)), (4, lambda: scenarios.gateway_overhead(plan)),
             (5, lambda: scenarios.big_backlog(plan, memory)),
             (6, lambda: overload.overload(plan, scenarios.bench_stack)),
             (7, lambda: topologies.topology_figures(plan, args.topologies)),
             (8, lambda: auth_cost.auth_cost(plan)),
             (9, lambda: blocking_reads.blocking_reads(blocking_reads.SMOKE if args.smoke else blocking_reads.FULL)),
             (10, lambda: notify_cost.notify_cost(notify_cost.SMOKE if args.smoke else notify_cost.FULL))]
    for number, step in steps:
        if number not in only:
            continue
        pressure, started = measure.cpu_pressure_total(), time.monotonic()
        try:
            done = step()
        except tools.ToolMissing as exc:
            done = [Row(f"{number}. (skipped)", f"n/a: {exc} not installed")]
        except Exception as exc:  # noqa: BLE001 - one broken figure must not cost the others
            done = [Row(f"{number}. (failed)", f"{type(exc).__name__}: {exc}")]
        if pressure is not None:
            waited = (measure.cpu_pressure_total() - pressure) / 1e6 / (time.monotonic() - started)
            done.append(Row(f"{number}. machine during figure {number}", f"CPU pressure {waited:.0%}",
                            load(), "(share of time some task waited for a CPU)"))
        rows += done
        say(f"figure {number} done: {load()}\n" + render(done))
    rows += scenarios.memory_rows(memory)
    print(f"shop benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {git_commit()}, "
          f"{'smoke' if args.smoke else 'full'} run; {machine()}; {load()} at the end\n")
    print(render(rows))
    for profile in profiles:
        print(f"\npy-spy during figure 2:\n{profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
