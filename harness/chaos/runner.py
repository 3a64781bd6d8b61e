"""One chaos run: start the system, create accounts, drive load while faults are injected on a seeded
schedule, wait until nothing is pending, then check everything and report."""
import contextlib
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from harness.chaos import checks
from harness.chaos.faults import KINDS, Injector, NativeTargets, plan, planned_seconds
from harness.chaos.workload import ACKED, AMBIGUOUS, Client, Journal, Load, Mix
from harness.infra import INFRA, Infra
from harness.invariants import query, wait_until_settled
from harness.stack import Stack


@dataclass
class Config:
    orders: int = 500              # at least this many order requests
    faults: int = 12               # at least len(KINDS) to cover every kind
    seed: int = 1
    users: int = 40                # accounts (with known top-ups)
    ghosts: int = 5                # users without an account: their orders are cancelled
    clients: int = 16              # concurrent client threads
    rate: float = None             # operations per second; None: spread the orders over the fault schedule
    heartbeat: int = 4             # AMQP heartbeat of the services (s): a freeze lasts 3-4 of them
    gap: tuple = (1.0, 4.0)        # seconds between faults
    pause: tuple = (0.5, 3.0)      # seconds a killed part stays down
    client_timeout: float = 20.0   # above the gateway's UPSTREAM_TIMEOUT (10 s): a timeout means "hung"
    settle_timeout: float = 180.0
    max_recovery: float = 10.0
    kinds: tuple = KINDS
    infra: Infra = INFRA
    compose: str = None            # a docker compose project directory: run against its containers
    gateway_url: str = None        # compose mode: the published gateway (default localhost:GATEWAY_HOST_PORT)
    commands: dict = field(default_factory=dict)  # harness.stack.Stack(commands=...): e.g. a broken variant
    env: dict = field(default_factory=dict)       # extra environment of the services
    keep: bool = False             # keep the databases, vhost and logs after the run


@dataclass
class Outcome:
    report: object
    summary: dict

    @property
    def ok(self):
        return self.report.ok


@contextlib.contextmanager
def native_system(config):
    """The three processes on fresh databases and vhost: (gateway url, order db, payment db, targets)."""
    stack = Stack(prefix="shop_chaos", heartbeat=config.heartbeat, infra=config.infra,
                  commands=config.commands, extra_env={"LOG_LEVEL": "WARNING", **config.env})
    targets = NativeTargets(stack)
    try:
        stack.start()
        yield stack.url, stack.order_dsn, stack.payment_dsn, targets
    finally:
        # Whatever happened, leave PostgreSQL and RabbitMQ running for everyone else.
        targets.ensure_up()
        if config.keep:
            roles = f", roles and broker users {stack.run_id}_*" if stack.credentials else ""
            print(f"kept databases {stack.order_db}, {stack.payment_db}, vhost {stack.vhost}{roles}, "
                  f"logs {stack.log_dir}")
            for process in stack.processes.values():
                process.stop()
        else:
            stack.close()
            print(f"service logs: {stack.log_dir}")


def status_counts(order_db):
    try:
        return dict(query(order_db, "SELECT status, count(*) FROM orders GROUP BY status"))
    except Exception:  # noqa: BLE001 - PostgreSQL may be down right now: the line says so
        return None


def progress_line(elapsed, journal, order_db, injector):
    orders = journal.of_kind("order")
    results = Counter(r.result for r in orders if r.attempts)
    counts = status_counts(order_db)
    db = ("db down" if counts is None else
          f"{counts.get('FINISHED', 0) + counts.get('CANCELLED', 0)} final, {counts.get('NEW', 0)} pending")
    now = f" (now: {injector.current.describe()})" if injector.current else ""
    return (f"[{elapsed:5.0f}s] orders {len(orders)} sent, {results[ACKED]} acked, {results[AMBIGUOUS]} unanswered"
            f" | {db} | top-ups {len(journal.of_kind('top_up'))} | faults {len(injector.applied)}/"
            f"{len(injector.faults)}{now}")


def drive(config, url, order_db, targets, journal, crashes, out):
    """Load and faults until both the order target and the schedule are done; returns (load, injector, start).
    Parts that die on their own are appended to `crashes` as (part, exit code, seconds into the run)."""
    faults = plan(config.faults, config.seed, config.heartbeat, config.gap, config.pause, config.kinds)
    rate = config.rate or max(2.0, config.orders / max(planned_seconds(faults), 1) * 1.5)
    run_id = secrets.token_hex(3)
    load = Load(Client(url, journal, run_id, timeout=config.client_timeout), list(range(1, config.users + 1)),
                list(range(config.users + 1, config.users + config.ghosts + 1)), config.seed, config.clients,
                rate, Mix())
    load.setup_accounts()
    orders_sent = threading.Event()
    injector = Injector(faults, targets, out, before_last=orders_sent)
    out(f"run {run_id}: {config.orders}+ orders at {rate:.1f} ops/s, {len(faults)} faults, seed {config.seed}")
    start = time.monotonic()
    load.start()
    injector.start()
    next_line = start + 1
    try:
        # The load goes on until the last fault is over (which waits for the order target).
        while not injector.done.is_set():
            injector.done.wait(0.1)
            if len(journal.of_kind("order")) >= config.orders:
                orders_sent.set()
            for part, code in targets.crashed():
                crashes.append((part, code, time.monotonic() - start))
                out(f"{part} DIED ON ITS OWN (exit code {code}); restarted")
            if time.monotonic() >= next_line:
                next_line += 1
                out(progress_line(time.monotonic() - start, journal, order_db, injector))
    finally:
        injector.stop()
        load.finish()
    return load, injector, start


def run(config, out=print):
    """Run the scenario; returns an `Outcome` (its report fails if any invariant does)."""
    if config.compose is None:
        system = native_system(config)
    else:
        from harness.chaos.compose import compose_system  # only compose users need docker
        system = compose_system(config)
    with system as (url, order_db, payment_db, targets):
        journal, crashes = Journal(), []
        load, injector, start = drive(config, url, order_db, targets, journal, crashes, out)
        load_ended = time.monotonic()
        out("load stopped; waiting until nothing is pending")
        settle = wait_until_settled(order_db, config.settle_timeout, payment_db)
        settled = None if settle is None else load_ended + settle
        last_fault = injector.last_ended or load_ended
        recovery = None if settled is None else settled - last_fault
        report = checks.check_data(order_db, payment_db, journal)
        checks.check_responses(report, journal, injector.faults, config.client_timeout)
        checks.check_api(report, url, order_db, payment_db, load.users + load.ghosts)
        checks.check_faults(report, injector.faults, config.kinds if config.faults >= len(config.kinds) else ())
        checks.check_recovery(report, recovery, config.max_recovery)
        report.add("no part died on its own", [f"{p} exited {c} at +{t:.0f} s" for p, c, t in crashes])
        summary = summarize(config, journal, injector, start, load_ended, recovery, settle, order_db)
    return Outcome(report, summary)


def summarize(config, journal, injector, start, load_ended, recovery, settle, order_db):
    orders, top_ups = journal.of_kind("order"), journal.of_kind("top_up")
    statuses = status_counts(order_db) or {}
    return {
        "orders sent": len(orders),
        "orders by client's knowledge": dict(Counter(r.result for r in orders)),
        "orders present": sum(statuses.values()),
        "orders FINISHED / CANCELLED": f"{statuses.get('FINISHED', 0)} / {statuses.get('CANCELLED', 0)}",
        "top-ups sent": len(top_ups),
        "top-ups by client's knowledge": dict(Counter(r.result for r in top_ups)),
        "HTTP attempts": dict(Counter(str(a.outcome) for r in journal.snapshot() for a in r.attempts)),
        "no answer, by fault during it": checks.no_answers_by_fault(journal, injector.faults),
        "resets and timeouts": checks.resets_and_timeouts(journal, injector.faults),
        "faults": len(injector.applied),
        "faults by kind": dict(sorted(injector.counts().items())),
        "load duration (s)": round(load_ended - start, 1),
        "settle after load stopped (s)": None if settle is None else round(settle, 1),
        "recovery after last fault (s)": None if recovery is None else round(recovery, 1),
        "seed": config.seed,
    }


def print_outcome(outcome, out=print):
    out("")
    for key, value in outcome.summary.items():
        if isinstance(value, list):  # one line each
            out(f"{key:32} {len(value) or 'none'}")
            for item in value:
                out(f"{'':34}{item}")
        else:
            out(f"{key:32} {value}")
    out("")
    out(outcome.report.table())
    out("")
    out("ALL INVARIANTS HOLD" if outcome.ok else "INVARIANTS VIOLATED")
