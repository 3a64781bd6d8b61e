"""Faults on the namespaced topology of scripts/netns-cluster.sh: partitions, hung nodes and power loss that stay
silent, as they do between real machines (no reset, no refusal: packets vanish, or a peer stops answering).

    topology = Topology.load()          # the file `scripts/netns-cluster.sh start` wrote
    topology.check_isolated()           # before any traffic
    topology.cut("pg1", "others")       # drop both ways between two groups; one_way=True: a -> b only
    topology.lose("services", "rabbit", 20)      # drop 20 % of the packets both ways, at random
    topology.heal()                     # every cut gone (the nft chain flushed)
    topology.freeze("r1"); topology.thaw("r1")   # SIGSTOP / SIGCONT every process of a node: sockets stay open
    topology.power_loss("pg1")          # cut from everyone and killed at once: no FIN or RST ever leaves it

A side is a node name (`r1`, `pg1`, `order`, ...), a group (`rabbit`, `postgres`, `services`), `others` (every
node not on the other side), or a list of these. Cuts are nft rules in the bridge's own namespace (bridge
family, by IPv4 address); ARP still passes, so a cut is a silent drop of every packet, like a firewall or a dead
link behind a switch, never "no route to host". Random loss is such a rule too (`numgen random`). This kernel has
no netem: no latency is emulated here.

Errors: `NotIsolated` when a namespace could send traffic out of the machine, `TopologyError` for a name the
topology does not have or a missing topology file, `subprocess.CalledProcessError` when `ip` or `nft` fails."""
import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from common.db.pg_hosts import REFUSES_WRITES

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "netns-cluster.sh"
DEFAULT_BASE = Path(os.environ.get("NETNS_BASE", "/var/tmp/shop-netns"))


class TopologyError(Exception):
    """A node or group the topology does not have, or no topology file (the cluster is not started)."""


class NotIsolated(Exception):
    """A namespace of the topology has a default route, or the root namespace an address of its subnet: traffic
    to a test address could leave the machine."""


def run(*command: str, input: str | None = None) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, input=input, timeout=60).stdout


@dataclass
class Topology:
    nodes: dict            # node -> its address
    namespaces: dict       # node -> its network namespace
    groups: dict           # group -> [node, ...]
    bridge_namespace: str
    table: str
    subnet: str
    gateway_url: str
    order_db: str          # libpq DSNs over the Unix sockets (from the root namespace, never cut)
    payment_db: str
    pg_ports: dict
    rabbit_env_files: dict
    base: str
    timings: dict

    @classmethod
    def load(cls, base: Path = DEFAULT_BASE) -> "Topology":
        path = Path(base) / "topology.json"
        if not path.exists():
            raise TopologyError(f"no {path}: start the topology with {SCRIPT} start")
        data = json.loads(path.read_text())
        return cls(**{key: data[key] for key in cls.__dataclass_fields__})

    # --- safety ------------------------------------------------------------------------------------------------

    def check_isolated(self) -> None:
        """Raise `NotIsolated` unless every namespace of the topology has no default route (IPv4 or IPv6) and the
        root namespace has no address in the topology's subnet."""
        for namespace in [self.bridge_namespace, *self.namespaces.values()]:
            routes = run("ip", "-n", namespace, "route", "show", "default") + \
                run("ip", "-n", namespace, "-6", "route", "show", "default")
            if routes.strip():
                raise NotIsolated(f"namespace {namespace} has a default route: {routes.strip()}")
        prefix = self.subnet.rsplit(".", 1)[0] + "."
        if f" {prefix}" in run("ip", "-o", "addr", "show"):
            raise NotIsolated(f"the root namespace has an address in {self.subnet}")

    # --- faults ------------------------------------------------------------------------------------------------

    def members(self, side, other=()) -> list:
        """The nodes of a side (see the module's docstring); `others` is every node not in `other`."""
        if isinstance(side, (list, tuple, set)):
            return sorted({node for part in side for node in self.members(part, other)})
        if side == "others":
            return sorted(set(self.nodes) - set(other))
        if side in self.groups:
            return list(self.groups[side])
        if side in self.nodes:
            return [side]
        raise TopologyError(f"no node or group {side!r} (nodes: {', '.join(self.nodes)}; groups: "
                            f"{', '.join(self.groups)}, others)")

    def cut(self, a, b, one_way: bool = False) -> None:
        """Drop every packet from side `a` to side `b`, and from `b` to `a` unless `one_way`."""
        first, second = self._sides(a, b)
        self._drop(first, second)
        if not one_way:
            self._drop(second, first)

    def lose(self, a, b, percent: int) -> None:
        """Drop `percent` % of the packets between sides `a` and `b`, both ways, each at random (nft `numgen
        random`): a lossy link, which TCP's retransmissions mostly hide, at a cost in latency."""
        if not 0 < percent <= 100:
            raise ValueError(f"a loss is a percentage from 1 to 100, not {percent}")
        first, second = self._sides(a, b)
        for sources, destinations in ((first, second), (second, first)):
            self._drop(sources, destinations, "numgen", "random", "mod", "100", "<", str(percent))

    def _sides(self, a, b) -> tuple:
        """The nodes of sides `a` and `b`, either of which may be `others` (every node not on the other side)."""
        first = self.members(a) if a != "others" else None
        second = self.members(b, first or ())
        return first or self.members(a, second), second

    def _drop(self, sources, destinations, *condition: str) -> None:
        def addresses(nodes):
            return "{ " + ", ".join(self.nodes[node] for node in nodes) + " }"
        self._nft("add", "rule", "bridge", self.table, "forward", "ip", "saddr", addresses(sources),
                  "ip", "daddr", addresses(destinations), *condition, "drop")

    def heal(self) -> None:
        """Remove every cut."""
        self._nft("flush", "chain", "bridge", self.table, "forward")

    def cuts(self) -> str:
        """The rules in force, as nft lists them."""
        return self._nft("list", "chain", "bridge", self.table, "forward")

    def _nft(self, *args: str) -> str:
        return run("ip", "netns", "exec", self.bridge_namespace, "nft", *args)

    def pids(self, node: str) -> list:
        """Every process of a node: all of them run in its namespace."""
        self.members(node)
        return [int(pid) for pid in run("ip", "netns", "pids", self.namespaces[node]).split()]

    def _signal(self, node: str, signum: int) -> list:
        pids = self.pids(node)
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        return pids

    def freeze(self, node: str) -> list:
        """SIGSTOP every process of `node` (its kernel still ACKs: only application timeouts notice); its pids."""
        return self._signal(node, signal.SIGSTOP)

    def thaw(self, node: str) -> list:
        return self._signal(node, signal.SIGCONT)

    def power_loss(self, node: str) -> None:
        """Cut `node` from everyone, then kill its processes: nothing it would send at its end reaches anyone.
        `heal()` then brings it back as a machine that rebooted without its processes (`restart` starts them)."""
        self.cut(node, "others")
        self._signal(node, signal.SIGCONT)
        self._signal(node, signal.SIGKILL)

    def restart(self, node: str) -> None:
        """Start a node's processes again (after `power_loss`)."""
        run(str(SCRIPT), "run-node", node)

    # --- who holds what ----------------------------------------------------------------------------------------

    def monitor_states(self) -> dict:
        """{data node: (reported state, goal state)} as the pg_auto_failover monitor sees them."""
        rows = self._sql(self.pg_ports["monitor"], "pg_auto_failover",
                         "SELECT nodename, reportedstate, goalstate FROM pgautofailover.node")
        return {name: (reported, goal) for name, reported, goal in rows}

    def primaries(self) -> list:
        """The data nodes that accept writes right now, each asked over its Unix socket (never cut)."""
        found = []
        for node in self.groups["postgres"]:
            if node == "monitor":
                continue
            try:
                (read_only,), = self._sql(self.pg_ports[node], "postgres", f"SELECT {REFUSES_WRITES}")
            except psycopg2.OperationalError:
                continue
            if not read_only:
                found.append(node)
        return found

    def acknowledging(self, nodes, timeout_ms: int = 500) -> list:
        """Those of `nodes` (data nodes) that acknowledge a commit within `timeout_ms`: a row written to a probe table
        over the node's Unix socket, in a database of the probe's own. A primary whose synchronous standby is gone
        claims to accept writes, but its commit waits for that standby: the wait is cancelled at the timeout, and
        PostgreSQL's warning ("committed locally, but might not have been replicated") means no acknowledgement."""
        found = []
        for node in nodes:
            try:
                conn = self._connect(self.pg_ports[node], "postgres", options=f"-c statement_timeout={timeout_ms}")
            except psycopg2.OperationalError:
                continue
            try:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("CREATE TABLE IF NOT EXISTS shop_commit_probe (at timestamptz)")
                    cur.execute("INSERT INTO shop_commit_probe VALUES (clock_timestamp())")
                if not any("synchronous replication" in notice for notice in conn.notices):
                    found.append(node)
            except psycopg2.Error:
                pass
            finally:
                conn.close()
        return found

    @staticmethod
    def _connect(port: int, dbname: str, **options: str):
        """A connection over the node's Unix socket (from the root namespace: never cut)."""
        return psycopg2.connect(host="/var/run/postgresql", port=port, dbname=dbname, user="postgres",
                                connect_timeout=3, **options)

    def _sql(self, port: int, dbname: str, sql: str) -> list:
        conn = self._connect(port, dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()

    def wait_formation(self, timeout: float = 90) -> float:
        """Wait until one data node is primary and the other secondary, both as assigned; the seconds it took.
        Raises `TimeoutError` with the states seen."""
        started, states = time.monotonic(), {}
        while time.monotonic() - started < timeout:
            try:
                states = self.monitor_states()
            except psycopg2.OperationalError:
                states = {}
            if sorted(states.values()) == [("primary", "primary"), ("secondary", "secondary")]:
                return time.monotonic() - started
            time.sleep(0.5)
        raise TimeoutError(f"the PostgreSQL formation did not settle within {timeout} s: {states}")

    def rabbitmqctl(self, node: str, *args: str, timeout: float = 30) -> str:
        env = {**os.environ, "RABBITMQ_CONF_ENV_FILE": self.rabbit_env_files[node]}
        return subprocess.run(["ip", "netns", "exec", self.namespaces[node], "rabbitmqctl", *args], env=env,
                              check=True, capture_output=True, text=True, timeout=timeout).stdout

    def _listed(self, *args: str) -> list | None:
        """The rows (split into fields) a `rabbitmqctl` list command gives on the first RabbitMQ node that answers,
        None if none does."""
        for node in self.groups["rabbit"]:
            try:
                listed = self.rabbitmqctl(node, "-q", *args, "--no-table-headers", timeout=10)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                continue
            return [line.split() for line in listed.splitlines() if line.strip()]
        return None

    def _rabbit_at(self, address: str) -> str:
        return next(node for node in self.groups["rabbit"] if self.nodes[node] == address)

    def broker_nodes_of(self, service: str) -> list:
        """The RabbitMQ nodes `service` (a node name: order, payment) has connections to, as the first node that
        answers lists the cluster's connections (its `host`: the node's address each connection reached)."""
        pairs = self._listed("list_connections", "host", "peer_host") or []
        return sorted({self._rabbit_at(host) for host, peer in pairs if peer == self.nodes[service]})

    def queue_leader(self, queue: str) -> str:
        """The RabbitMQ node leading the quorum queue `queue`, as the first node that answers says."""
        for name, leader in self._listed("list_queues", "name", "leader") or []:
            if name == queue:
                return self._rabbit_at(leader.rsplit("@", 1)[1])
        raise TopologyError(f"no RabbitMQ node knows the leader of {queue}")

    def wait_rabbit_cluster(self, timeout: float = 120, steady: float = 10) -> float:
        """Wait until every RabbitMQ node has seen all three running and no partition for `steady` seconds in a row;
        the seconds until that began. Raises `TimeoutError`.

        Steady, not just whole once: `autoheal` may restart the losing side of a partition some time after the
        nodes first see each other again (seen: a minute after a hung node's thaw), and a fault injected in the
        middle of that meets a cluster that is not what it looks like."""
        started, seen = time.monotonic(), {}
        whole_since = None
        want = len(self.groups["rabbit"])

        def status_of(node: str) -> tuple[int, bool]:
            status = self._cluster_status(node) or {}
            return len(status.get("running_nodes", [])), bool(status.get("partitions"))
        # The nodes asked at once: each rabbitmqctl boots an Erlang VM (about a second), so asked in turn a look at
        # the cluster took three, and the steady wait three looks.
        with ThreadPoolExecutor(len(self.groups["rabbit"])) as asking:
            while time.monotonic() - started < timeout:
                seen = dict(zip(self.groups["rabbit"], asking.map(status_of, self.groups["rabbit"])))
                if all(running == want and not split for running, split in seen.values()):
                    whole_since = whole_since if whole_since is not None else time.monotonic()
                    if time.monotonic() - whole_since >= steady:
                        return whole_since - started
                else:
                    whole_since = None
                time.sleep(1)
        raise TimeoutError(f"the RabbitMQ cluster was not whole and steady for {steady} s within {timeout} s: "
                           f"(running, partitioned) seen {seen}")

    def _cluster_status(self, node: str) -> dict | None:
        """`rabbitmqctl cluster_status` as `node` answers it, None if it does not (down, or its app stopped)."""
        try:
            return json.loads(self.rabbitmqctl(node, "-q", "cluster_status", "--formatter", "json", timeout=10))
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError):
            return None

    def restart_nodes_listing_partitions(self) -> list:
        """The operator's steps for RabbitMQ 3.10's autoheal gone wrong (docs/partitions.md, "Autoheal in a loop"):
        a node whose list of partitions still names a node that runs again asks for autoheal each time that one
        comes up, and the winner, finding it booting, aborts and has it restart a minute later, over and over;
        and a loser told to start may never start. Restarting the RabbitMQ application of each node that lists a
        partition (`stop_app`, `start_app`) starts it with an empty list, and `start_app` starts one left stopped.
        The nodes acted on."""
        stopped, listing = [], set()
        for node in self.groups["rabbit"]:
            status = self._cluster_status(node)
            if status is None:
                stopped.append(node)
                continue
            listing |= {self._rabbit_at(name.rsplit("@", 1)[1]) for name in status.get("partitions") or {}}
        for node in stopped:
            try:
                self.rabbitmqctl(node, "start_app", timeout=300)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                continue  # its machine is down: nothing an operator can start
        for stale in sorted(listing - set(stopped)):
            self.rabbitmqctl(stale, "stop_app", timeout=120)
            self.rabbitmqctl(stale, "start_app", timeout=300)
        return sorted(set(stopped) | listing)


def start(base: Path = DEFAULT_BASE) -> Topology:
    """Start the topology (scripts/netns-cluster.sh start) and return it, checked isolated."""
    subprocess.run([str(SCRIPT), "start"], check=True, timeout=600, env={**os.environ, "NETNS_BASE": str(base)})
    topology = Topology.load(base)
    topology.check_isolated()
    return topology


def stop(base: Path = DEFAULT_BASE) -> None:
    """Tear everything down (scripts/netns-cluster.sh stop): processes, namespaces, files."""
    subprocess.run([str(SCRIPT), "stop"], check=True, timeout=300, env={**os.environ, "NETNS_BASE": str(base)})
