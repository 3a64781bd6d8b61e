"""What the benchmark reads from the stack: server-side timestamps, counts, queue depths, and seeding."""

import subprocess

import psycopg2

from harness.infra import INFRA
from harness.invariants import query
from harness.stack import cpu_seconds

BALANCE = 999_999_999  # every seeded user can pay for every order the benchmark places


def run_sql(dsn, sql, params=None):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
    finally:
        conn.close()


def seed_accounts(payment_dsn, users):
    """Accounts 1..users with a large balance, so orders take the debit path (FINISHED); each balance is a
    credit in the ledger, as a top-up would have written it."""
    run_sql(payment_dsn, "WITH seeded AS (INSERT INTO accounts (user_id, balance) SELECT g, %s "
                         "FROM generate_series(1, %s) g ON CONFLICT DO NOTHING RETURNING user_id, balance) "
                         "INSERT INTO account_movements (user_id, kind, amount, balance, request_key) "
                         "SELECT user_id, 'credit', balance, balance, 'bench seed' FROM seeded", (BALANCE, users))
    return {user: BALANCE for user in range(1, users + 1)}


def insert_backlog(order_dsn, orders, users):
    """`orders` orders with their outbox rows, written straight into the Order Service's tables (the
    memory figure needs a backlog bigger than HTTP would build in reasonable time)."""
    run_sql(order_dsn, "WITH placed AS (INSERT INTO orders (user_id, amount, description) "
                       "SELECT g %% %s + 1, 1, 'bench' FROM generate_series(1, %s) g "
                       "RETURNING order_id, user_id, amount) "
                       "INSERT INTO outbox_os (order_id, user_id, amount) SELECT * FROM placed", (users, orders))


def db_now(dsn):
    return query(dsn, "SELECT clock_timestamp()")[0][0]


def order_count(order_dsn):
    return query(order_dsn, "SELECT count(*) FROM orders")[0][0]


def latency_ms(order_dsn):
    """p50, p95, p99 of create→final (orders.created_at → updated_at) over all final orders, in ms."""
    row = query(order_dsn, "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP "
                           "(ORDER BY extract(epoch FROM updated_at - created_at)) "
                           "FROM orders WHERE status <> 'NEW'")[0][0]
    return [v * 1000 for v in row] if row else [None] * 3


def stage_latencies_ms(order_dsn, payment_dsn):
    """p50 / p99 in ms of each stage of create→final, from both databases' timestamps (one server, one clock):
    {"order placed → in the inbox": (p50, p99), "inbox → settled": ..., "settled → order final": ...}."""
    return stage_percentiles(stage_samples_ms(order_dsn, payment_dsn))


STAGES = ("order placed → in the inbox", "inbox → settled", "settled → order final")


def stage_samples_ms(order_dsn, payment_dsn):
    """{stage: [ms of each order]} (see `stage_latencies_ms`)."""
    orders = dict((row[0], row[1:]) for row in query(
        order_dsn, "SELECT order_id, created_at, updated_at FROM orders WHERE status <> 'NEW'"))
    stages = {name: [] for name in STAGES}
    for order_id, stored, settled in query(payment_dsn, "SELECT order_id, created_at, processed_at FROM inbox"):
        if order_id in orders and settled is not None:
            placed, final = orders[order_id]
            for name, (start, end) in zip(stages, ((placed, stored), (stored, settled), (settled, final))):
                stages[name].append((end - start).total_seconds() * 1000)
    return stages


def stage_percentiles(stages):
    return {name: (percentile(values, 0.5), percentile(values, 0.99)) for name, values in stages.items() if values}


def latency_samples_ms(order_dsn):
    """create→final (orders.created_at → updated_at) of every final order, in ms."""
    return [row[0] * 1000 for row in query(order_dsn, "SELECT extract(epoch FROM updated_at - created_at)::float8 "
                                                      "FROM orders WHERE status <> 'NEW'")]


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * share), len(ordered) - 1)]


def finalized_between(order_dsn, start, end):
    return query(order_dsn, "SELECT count(*) FROM orders WHERE status <> 'NEW' AND updated_at BETWEEN %s AND %s",
                 (start, end))[0][0]


def unsent_count(order_dsn):
    """`outbox_os` rows not yet sent once (by the relay or at once)."""
    return query(order_dsn, "SELECT count(*) FROM outbox_os WHERE attempts = 0")[0][0]


def queue_depth(vhost, queue):
    """Messages waiting in `queue` (ready + unacked), from rabbitmqctl (of the node the harness uses)."""
    out = INFRA.rabbitmqctl("list_queues", "-p", vhost, "name", "messages")
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


def server_cpu_seconds():
    """CPU seconds used so far by RabbitMQ (every `beam.smp`) and PostgreSQL (every process of the `postgres`
    user) on this machine: what the servers spend on the services' behalf, on a machine running nothing else."""
    def total(pgrep_args):
        pids = subprocess.run(["pgrep", *pgrep_args], capture_output=True, text=True).stdout.split()
        seconds = 0.0
        for pid in pids:
            try:
                seconds += cpu_seconds(int(pid))
            except (OSError, ValueError, IndexError):
                pass  # the process ended meanwhile
        return seconds
    return {"RabbitMQ": total(["-f", "beam.smp"]), "PostgreSQL": total(["-u", "postgres"])}


def cpu_pressure_total():
    """Microseconds, since boot, in which some runnable task waited for a CPU (Linux PSI); None if absent."""
    try:
        line = open("/proc/pressure/cpu").readline()
    except OSError:
        return None
    return int(line.split("total=")[1])
