"""(10) What the NOTIFY of final orders costs PostgreSQL: the Order Service's `FINALIZE_ORDERS` run by pgbench
clients as fast as they go, with its NOTIFY and without (the statement's `notify` parameter), in alternating rounds
of one run, while a LISTEN connection drains the notifications as a replica's listener does.

A transaction that notified takes a global lock at COMMIT to queue its notifications, so such commits are
serialized across the whole server; each statement finalizes fresh `NEW` orders, so each one notifies. Batches of
one order are the worst case (one NOTIFY per order: the Order Service at low load); the consumer's batches grow with
the load (up to BATCH_SIZE), and so does the work each NOTIFY is shared by."""
import secrets
import select
import statistics
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from psycopg2.extensions import AsIs

from bench import measure, tools
from bench.progress import say
from bench.table import Row, per_s
from common.db.database import schema_section
from harness.infra import INFRA
from harness.invariants import query
from order_svc import repo

ID_STRIDE = 10_000_000  # each client finalizes ids of its own range: client c's start at c × this


@dataclass(frozen=True)
class Sizes:
    clients: tuple = (2, 16)  # two replicas' consumers, one statement at a time each; and saturation
    seconds: float = 5
    rounds: int = 3
    batches: tuple = (1, 20)
    orders_rate: int = 60_000  # orders/s all clients could finalize at most: how many NEW orders to insert


FULL, SMOKE = Sizes(), Sizes(clients=(2,), seconds=1, rounds=1, batches=(1,), orders_rate=10_000)


def script(dsn, batch, notify):
    """The pgbench script: the next `batch` orders of the client's range (`:n`, kept across transactions)."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        sql = cur.mogrify(repo.FINALIZE_ORDERS.sql, {
            **repo.FINALIZE_ORDERS.defaults, "notify": notify,
            "order_ids": AsIs("ARRAY(SELECT generate_series(:lo, :lo + :batch - 1))"),
            "statuses": AsIs("array_fill('FINISHED'::text, ARRAY[:batch])")}).decode()
    conn.close()
    return f"\\set lo :client_id * {ID_STRIDE} + :n * :batch + 1\n{' '.join(sql.split())};\n\\set n :n + 1\n"


class Drain(threading.Thread):
    """A LISTEN connection that reads every notification as it comes, counting them."""

    def __init__(self, dsn):
        super().__init__(daemon=True)
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        self.conn.cursor().execute(f"LISTEN {repo.FINAL_ORDERS_CHANNEL}")
        self.received, self.stopping = 0, threading.Event()

    def run(self):
        while not self.stopping.is_set():
            if select.select([self.conn], [], [], 0.2)[0]:
                self.conn.poll()
                self.received += len(self.conn.notifies)
                self.conn.notifies.clear()

    def stop(self):
        self.stopping.set()
        self.join()
        self.conn.close()


def pgbench_run(dsn, path, clients, seconds, batch):
    """(statements per second, mean latency in ms, statements run) of one pgbench run of `path`."""
    binary = tools.find("pgbench")
    if not binary:
        raise tools.ToolMissing("pgbench")
    command = [binary, "-n", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(max(int(seconds), 1)),
               "-D", "n=0", "-D", f"batch={batch}", "-f", str(path), dsn]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 120).stdout
    value = lambda prefix, index: next(line for line in out.splitlines() if line.startswith(prefix)).split()[index]  # noqa: E731
    return (float(value("tps = ", 2)), float(value("latency average", 3)),
            int(value("number of transactions actually processed", 5).split("/")[0]))


def notify_cost(plan: Sizes):
    name = f"shop_bench_notify_{secrets.token_hex(4)}"
    measure.run_sql(INFRA.pg_admin_dsn, f'CREATE DATABASE "{name}"')
    dsn = INFRA.dsn(name)
    try:
        measure.run_sql(dsn, schema_section("order_svc"))
        return [row for clients in plan.clients for batch in plan.batches
                for row in cell_rows(plan, dsn, clients, batch)]
    finally:
        INFRA.drop_database(name)


def cell_rows(plan, dsn, clients, batch):
    # Enough NEW orders for a run at a generous rate: each statement takes fresh ones, and all are NEW again
    # before the next run.
    measure.run_sql(dsn, "TRUNCATE outbox_os, orders")
    measure.run_sql(dsn, "INSERT INTO orders (order_id, user_id, amount, description, status, created_at) "
                         "SELECT c * %s + g, 1, 1, 'bench', 'NEW', now() FROM generate_series(0, %s) c, "
                         "generate_series(1, %s) g",
                    (ID_STRIDE, clients - 1, int(plan.seconds * plan.orders_rate / clients * 1.5)))
    results, drain = {True: [], False: []}, Drain(dsn)
    drain.start()
    try:
        with tempfile.TemporaryDirectory(prefix="shop_bench_notify_") as directory:
            paths = {notify: Path(directory, f"finalize_{notify}.sql") for notify in (True, False)}
            for notify, path in paths.items():
                path.write_text(script(dsn, batch, notify))
            for round_ in range(1, plan.rounds + 1):
                for notify in (True, False):
                    say(f"[10] NOTIFY cost: round {round_}/{plan.rounds}, batches of {batch}, "
                        f"{'with' if notify else 'without'} NOTIFY, {clients} pgbench clients, "
                        f"{plan.seconds:.0f} s")
                    measure.run_sql(dsn, "UPDATE orders SET status = 'NEW' WHERE status <> 'NEW'")
                    measure.run_sql(dsn, "VACUUM ANALYZE orders")
                    tps, latency, statements = pgbench_run(dsn, paths[notify], clients, plan.seconds, batch)
                    finalized = query(dsn, "SELECT count(*) FROM orders WHERE status <> 'NEW'")[0][0]
                    if finalized != statements * batch:
                        raise RuntimeError(f"{statements} statements finalized {finalized} orders, not "
                                           f"{statements * batch}: raise Sizes.orders_rate")
                    results[notify].append((tps, latency))
    finally:
        drain.stop()
    rate = {notify: statistics.median(t for t, _ in values) for notify, values in results.items()}
    latency = {notify: statistics.median(lat for _, lat in values) for notify, values in results.items()}
    return [Row(f"10. FINALIZE_ORDERS, {batch} order{'s' if batch > 1 else ''} per statement, "
                f"{clients} clients: statements/s with NOTIFY / without (median of {plan.rounds})",
                f"{per_s(rate[True])} / {per_s(rate[False])} ({rate[True] / rate[False]:.2f}×)",
                f"orders/s {per_s(rate[True] * batch)} / {per_s(rate[False] * batch)}; latency "
                f"{latency[True]:.2f} / {latency[False]:.2f} ms; {drain.received:,} notifications received", "")]
