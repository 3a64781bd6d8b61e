"""What the benchmark reads from the stack: server-side timestamps, counts, queue depths, and seeding."""

import psycopg2

from harness.infra import INFRA
from harness.invariants import query

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
    """Accounts 1..users with a large balance, so orders take the debit path (FINISHED)."""
    run_sql(payment_dsn, "INSERT INTO accounts (user_id, balance) SELECT g, %s FROM generate_series(1, %s) g "
                         "ON CONFLICT DO NOTHING", (BALANCE, users))
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


def finalized_between(order_dsn, start, end):
    return query(order_dsn, "SELECT count(*) FROM orders WHERE status <> 'NEW' AND updated_at BETWEEN %s AND %s",
                 (start, end))[0][0]


def queue_depth(vhost, queue):
    """Messages waiting in `queue` (ready + unacked), from rabbitmqctl (of the node the harness uses)."""
    out = INFRA.rabbitmqctl("list_queues", "-p", vhost, "name", "messages")
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


def cpu_pressure_total():
    """Microseconds, since boot, in which some runnable task waited for a CPU (Linux PSI); None if absent."""
    try:
        line = open("/proc/pressure/cpu").readline()
    except OSError:
        return None
    return int(line.split("total=")[1])
