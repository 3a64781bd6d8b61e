"""Figure 7: the whole stack's latency and throughput on each topology, back to back in one run — the price
of quorum queues, of a three-node RabbitMQ cluster and of PostgreSQL's synchronous standby, as ratios.

    classic            single PostgreSQL, single RabbitMQ node, QUEUE_TYPE=classic (the baseline)
    quorum             the same with quorum queues (the default)
    rabbitmq-cluster   single PostgreSQL, the cluster of scripts/rabbitmq-cluster.sh, quorum queues
    pg-ha              the primary + synchronous standby of scripts/pg-ha.sh, single RabbitMQ node, quorum
    cluster            both: the three-node RabbitMQ cluster and the synchronous pair, quorum queues

The clusters must be started beforehand (their scripts' variables pick which ones). Rounds are interleaved
so that a busy moment of a shared machine hits every topology alike; figures are medians over the rounds."""
import dataclasses
import statistics
from dataclasses import dataclass

from bench import measure, tools
from bench.progress import say
from bench.queue_types import cluster_infra, script_infra
from bench.scenarios import bench_stack, settle
from bench.steady import steady_orders
from bench.table import Row, ms, per_s
from harness.infra import INFRA
from harness.invariants import check_invariants, wait_until_settled


@dataclass(frozen=True)
class Topology:
    label: str
    infra: object
    queue_type: str
    versus: str  # the topology its ratios are taken against: the one it differs from in one part only


def pg_ha_infra():
    # The failover manager owns the pair's servers: no pg_ctlcluster name.
    return dataclasses.replace(script_infra("pg-ha.sh", "pg_admin_dsn", "pg_ha"), pg_cluster="")


KNOWN = {
    "classic": lambda: Topology("single node, classic queues", INFRA, "classic", "classic"),
    "quorum": lambda: Topology("single node, quorum queues", INFRA, "quorum", "classic"),
    "rabbitmq-cluster": lambda: Topology("3-node RabbitMQ cluster, quorum queues", cluster_infra(), "quorum",
                                         "classic"),
    "pg-ha": lambda: Topology("PostgreSQL primary + synchronous standby (quorum queues)", pg_ha_infra(), "quorum",
                              "quorum"),
    "cluster": lambda: Topology("3-node RabbitMQ cluster + PostgreSQL synchronous pair, quorum queues",
                                dataclasses.replace(pg_ha_infra(), **{field: getattr(cluster_infra(), field) for field
                                                                      in ("amqp_base", "rabbitmq_env",
                                                                          "rabbitmq_nodes")}), "quorum", "quorum"),
}


def topologies(names):
    """{name: Topology} of the comma-separated `names`, in that order; the baselines they refer to are added."""
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in KNOWN]
    if unknown:
        raise ValueError(f"unknown topology {', '.join(unknown)}; known: {', '.join(KNOWN)}")
    found = {}
    for name in chosen:
        topology = KNOWN[name]()
        if topology.versus not in found:
            found[topology.versus] = KNOWN[topology.versus]()
        found[name] = topology
    return found


def measure_once(plan, name, topology):
    """(create→final p50 ms, p99 ms at the steady rate, accepted/s and finalized/s under wrk)."""
    with bench_stack(plan, infra=topology.infra, QUEUE_TYPE=topology.queue_type) as (stack, top_ups):
        say(f"[7] {name}: {plan.topology_rate} orders/s for {plan.latency_seconds:.0f} s")
        codes, _ = steady_orders(stack.url, plan.topology_rate, plan.latency_seconds, plan.users)
        if set(codes) != {201}:
            say(f"  {name}: answers other than 201 at the steady rate: {dict(codes)}")
        settle(stack, plan, name)
        p50, _, p99 = measure.latency_ms(stack.order_dsn)
        say(f"[7] {name}: wrk, {plan.topology_clients} clients for {plan.load_seconds:.0f} s")
        start = measure.db_now(stack.order_dsn)
        result = tools.wrk(stack.url + "/orders", plan.topology_clients, plan.load_seconds, post=True, users=plan.users)
        end = measure.db_now(stack.order_dsn)
        finalized = measure.finalized_between(stack.order_dsn, start, end) / (end - start).total_seconds()
        settle(stack, plan, name)
        # Orders final is not yet the end: the Payments outbox deletes its rows only once the broker confirmed
        # them, which on the cluster (a majority must write) can come after the Order Service applied them.
        wait_until_settled(stack.order_dsn, plan.settle_timeout, payment_db=stack.payment_dsn)
        report = check_invariants(stack.order_dsn, stack.payment_dsn, top_ups)
        if not report.ok:
            raise RuntimeError(f"{name}: invariants failed\n{report.table()}")
    say(f"  {name}: p50 {ms(p50)}, p99 {ms(p99)}, {result.ok_per_second:.0f} accepted/s, {finalized:.0f} finalized/s")
    return p50, p99, result.ok_per_second, finalized


def topology_figures(plan, names):
    """(7) each figure of each topology, as a median over `plan.topology_rounds` interleaved rounds, beside
    its ratio to the topology it differs from in one part."""
    chosen = topologies(names)
    runs = {name: [] for name in chosen}
    for _ in range(plan.topology_rounds):
        for name, topology in chosen.items():
            runs[name].append(measure_once(plan, name, topology))
    medians = {name: [statistics.median(run[i] for run in results) for i in range(4)] for name, results in runs.items()}
    rows = []
    for name, topology in chosen.items():
        (p50, p99, accepted, finalized), base = medians[name], medians[topology.versus]
        versus = "" if name == topology.versus else f" of {topology.versus}"
        rows += [
            Row(f"7. {topology.label}: create→final p50 / p99 at {plan.topology_rate}/s", f"{ms(p50)} / {ms(p99)}",
                f"{p50 / base[0]:.2f}× / {p99 / base[1]:.2f}×{versus}"),
            Row(f"7. {topology.label}: accepted/s, wrk {plan.topology_clients} clients", per_s(accepted),
                f"{accepted / base[2]:.2f}×{versus}"),
            Row(f"7. {topology.label}: finalized/s during that load", per_s(finalized),
                f"{finalized / base[3]:.2f}×{versus}"),
        ]
    return rows
