"""Faults, their seeded random schedule, and the injector thread that applies them one after another.

What a fault does to which part is left to a *targets* object, so the same schedule runs against native
processes (`NativeTargets`) or docker compose containers (`harness.chaos.compose.ComposeTargets`):

    kill(part, pause)          SIGKILL a service or the gateway, start it again after `pause` seconds
    freeze(part, seconds)      SIGSTOP a service for longer than the broker heartbeat, then SIGCONT
    broker_app(pause)          rabbitmqctl stop_app, pause, start_app
    broker_restart(pause)      stop the whole RabbitMQ node, pause, start it
    broker_node_kill(pause)    SIGKILL one node of a RabbitMQ cluster, pause, start it (harness.cluster)
    db_restart(immediate)      restart PostgreSQL (fast shutdown, or `-m immediate`: crash recovery)
    db_failover()              lose the primary of a pg_auto_failover pair; back once the old one is the standby
    ensure_up()                after anything went wrong: resume frozen parts, start servers that are down
    crashed()                  parts that died although no fault was acting on them (restarted again)

Each method returns once the part is back (process healthy, server accepting connections)."""
import logging
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass

from common.broker.messages import ORDER_REQUESTS
from harness.infra import InfraError
from harness.pg_ha import PgHa

logger = logging.getLogger(__name__)

KINDS = ("kill order", "kill payment", "kill gateway", "freeze order", "freeze payment",
         "rabbitmq stop_app", "rabbitmq restart", "postgres restart", "postgres restart -m immediate")
# On a primary + standby of scripts/pg-ha.sh (SHOP_TEST_PG_HA) the failover manager owns the servers:
# restarting one behind its back is not a fault of that topology, losing the primary is.
PG_HA_KINDS = tuple(k for k in KINDS if not k.startswith("postgres")) + ("postgres failover",)


def default_kinds(infra):
    return PG_HA_KINDS if infra.pg_ha else KINDS

# Kinds that need a RabbitMQ cluster (scripts/rabbitmq-cluster.sh; harness.infra's SHOP_TEST_RABBITMQ_NODES).
CLUSTER_KINDS = ("rabbitmq node kill",)


@dataclass
class Fault:
    kind: str
    gap: float          # seconds of normal operation before it
    pause: float        # seconds the part stays down (kill / freeze / broker); unused for postgres
    started: float = None
    ended: float = None  # the part is back
    error: str = None

    def apply(self, targets):
        verb, _, part = self.kind.partition(" ")
        if verb == "kill":
            targets.kill(part, self.pause)
        elif verb == "freeze":
            targets.freeze(part, self.pause)
        elif self.kind == "rabbitmq stop_app":
            targets.broker_app(self.pause)
        elif self.kind == "rabbitmq restart":
            targets.broker_restart(self.pause)
        elif self.kind == "postgres failover":
            targets.db_failover()
        elif self.kind == "rabbitmq node kill":
            targets.broker_node_kill(self.pause)
        else:
            targets.db_restart(immediate=self.kind.endswith("immediate"))

    def describe(self):
        pause = "" if self.kind.startswith("postgres") else f" for {self.pause:.1f} s"
        return f"{self.kind}{pause}"


def plan(count, seed, heartbeat, gap=(1.0, 4.0), pause=(0.5, 3.0), kinds=KINDS):
    """`count` faults: every kind once per round (so any count >= len(kinds) covers them all), each round in
    a seeded random order, with random gaps and pauses. A freeze lasts 3-4 heartbeats, so that the broker always
    drops the frozen service's connection: RabbitMQ closes it after two heartbeat intervals without a byte,
    checked once an interval, so 1.5-3 heartbeats after the last frame the service sent (measured under podman
    at 5 s with the 2-3 heartbeats freezes lasted before: an 11.1 s one was not cut, a 13.5 s one was, 11.5 s in)."""
    rng = random.Random(seed)
    faults = []
    while len(faults) < count:
        round_ = list(kinds)
        rng.shuffle(round_)
        for kind in round_[:count - len(faults)]:
            down = rng.uniform(3 * heartbeat, 4 * heartbeat) if kind.startswith("freeze") else rng.uniform(*pause)
            faults.append(Fault(kind, rng.uniform(*gap), down))
    return faults


def gateway_down_windows(faults):
    """(start, end) of every time the gateway was down: clients may see no HTTP answer only then."""
    return [(f.started, f.ended) for f in faults if f.kind == "kill gateway" and f.ended is not None]


def fault_during(faults, start, end):
    """The first fault that acted at some time from `start` to `end` (time.monotonic()), or None: the one a
    request began in explains what became of it (a connection begun in a gateway kill may hang 20 s, into
    the next fault)."""
    return next((f for f in faults if f.started is not None and f.started <= end
                 and (f.ended is None or start <= f.ended)), None)


def last_fault_before(faults, moment):
    """The fault that ended last before `moment`, or None."""
    return max((f for f in faults if f.ended is not None and f.ended < moment), key=lambda f: f.ended, default=None)


def planned_seconds(faults):
    """A rough duration of the schedule (gaps, pauses, and typical recovery of each kind)."""
    typical = {"kill": 1.5, "rabbitmq": 5.0, "postgres": 2.0, "freeze": 0.5, "postgres failover": 20.0}
    return sum(f.gap + f.pause + typical.get(f.kind, typical[f.kind.split()[0]]) for f in faults)


class Injector:
    """Applies `faults` in order on a thread; `done` is set after the last one (or `stop()`).

    The last fault waits for `before_last` (an Event) too: the runner sets it once the load has sent all its
    orders, so the load can stop right after the last fault and recovery is timed from it."""

    def __init__(self, faults, targets, out=lambda line: None, before_last=None):
        self.faults, self.targets, self.out = faults, targets, out
        self.before_last = before_last
        self.done = threading.Event()
        self._stop = threading.Event()
        self.current = None
        self._thread = threading.Thread(target=self._run, name="fault-injector", daemon=True)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    @property
    def applied(self):
        return [f for f in self.faults if f.ended is not None]

    @property
    def last_ended(self):
        return max((f.ended for f in self.applied), default=None)

    def counts(self):
        return Counter(f.kind for f in self.applied)

    def _run(self):
        try:
            for fault in self.faults:
                if self._stop.wait(fault.gap):
                    return
                if fault is self.faults[-1] and self.before_last is not None:
                    while not self.before_last.wait(0.2):
                        if self._stop.is_set():
                            return
                self.current = fault
                number = f"fault {len(self.applied) + 1}/{len(self.faults)}"
                self.out(f"{time.strftime('%H:%M:%S')} {number}: {fault.describe()}")
                fault.started = time.monotonic()
                with self.targets.busy:
                    try:
                        fault.apply(self.targets)
                    except Exception as exc:
                        logger.exception("fault %s failed", fault.kind)
                        fault.error = repr(exc)
                        self.targets.ensure_up()
                fault.ended = time.monotonic()
                self.current = None
                self.out(f"{time.strftime('%H:%M:%S')} {number}: back after {fault.ended - fault.started:.1f} s"
                         + (f" (FAILED: {fault.error})" if fault.error else ""))
        finally:
            self.done.set()


class NativeTargets:
    """Faults on a `harness.stack.Stack` of local processes and the servers of its `Infra`."""

    def __init__(self, stack):
        self.stack, self.infra = stack, stack.infra
        self.busy = threading.Lock()  # held while a fault acts: a part down then is no crash
        self.node_kills = []  # [(node name, why it was chosen)] of `broker_node_kill`

    def crashed(self):
        """[(part, exit code)] of processes that died on their own since the last call; each is restarted
        so the run goes on (the report fails)."""
        if not self.busy.acquire(blocking=False):
            return []
        try:
            dead = [(name, p.popen.returncode) for name, p in self.stack.processes.items() if not p.is_running()]
            for name, _ in dead:
                logger.error("%s died on its own; see %s", name, self.stack[name].log_path)
                self.stack.restart(name)
            return dead
        finally:
            self.busy.release()

    def kill(self, part, pause):
        self.stack[part].kill()
        time.sleep(pause)
        self.stack.restart(part)

    def freeze(self, part, seconds):
        # Only a service connected to the broker can be cut off from it.
        self.stack[part].wait_ready()
        self.stack[part].signal(signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            self.stack[part].signal(signal.SIGCONT)

    def broker_app(self, pause):
        self.infra.rabbit_stop_app()
        time.sleep(pause)
        self.infra.rabbit_start_app()

    def broker_restart(self, pause):
        self.infra.rabbit_stop_node()
        time.sleep(pause)
        self.infra.rabbit_start_node()

    def broker_node_kill(self, pause):
        """Alternately the node most of the services' connections use and the leader of outbox_os; back once
        it runs and every queue has all its members online again."""
        cluster = self.infra.cluster
        if cluster is None:
            raise InfraError("rabbitmq node kill needs a cluster: see scripts/rabbitmq-cluster.sh")
        leader = len(self.node_kills) % 2 == 1
        node = cluster.victim(self.stack.vhost, ORDER_REQUESTS, leader)
        self.node_kills.append((node.name, "leader of outbox_os" if leader else "the services' node"))
        logger.warning("rabbitmq node kill: SIGKILL %s, %s", *self.node_kills[-1])
        node.kill()
        time.sleep(pause)
        node.start()
        cluster.wait_replicated(self.stack.vhost)

    def db_restart(self, immediate):
        self.infra.pg_restart(immediate=immediate)

    def db_failover(self):
        if not self.infra.pg_ha:
            raise InfraError("postgres failover needs a scripts/pg-ha.sh pair (SHOP_TEST_PG_HA / --pg-ha)")
        PgHa(self.infra.pg_ha).failover()

    def ensure_up(self):
        for process in self.stack.processes.values():
            process.signal(signal.SIGCONT)
        self.infra.ensure_up()
        for name, process in self.stack.processes.items():
            if not process.is_running():
                self.stack.restart(name)
