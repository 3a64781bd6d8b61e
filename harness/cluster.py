"""The nodes of a RabbitMQ cluster made by `scripts/rabbitmq-cluster.sh`, as the harness sees them: which node
a stack's connections use, which node leads a queue, killing and restarting one node, and the queues'
replication state.

Every node is addressed through its own rabbitmq-env.conf (`RABBITMQ_CONF_ENV_FILE`), so nothing here can
reach the machine's default node."""
import json
import os
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from harness.infra import InfraError, run, wait


@dataclass(frozen=True)
class Node:
    name: str       # e.g. shop1@localhost
    env_file: str   # its rabbitmq-env.conf
    amqp_port: int
    pid_file: str

    @classmethod
    def from_env_file(cls, env_file):
        """Read NODENAME, NODE_PORT and PID_FILE from a rabbitmq-env.conf; raises InfraError if one is missing."""
        values = dict(line.split("=", 1) for line in Path(env_file).read_text().splitlines() if "=" in line)
        try:
            return cls(values["NODENAME"], env_file, int(values["NODE_PORT"]), values["PID_FILE"])
        except KeyError as exc:
            raise InfraError(f"{env_file} sets no {exc.args[0]}") from None

    def ctl(self, *args, timeout=60):
        """`rabbitmqctl -q ARGS` on this node; its output. Raises InfraError if it fails."""
        return run(["rabbitmqctl", "-q", *args], env={**os.environ, "RABBITMQ_CONF_ENV_FILE": self.env_file},
                   timeout=timeout)

    def is_up(self):
        try:
            self.ctl("await_startup", "--timeout", "5", timeout=20)
            return True
        except InfraError:
            return False

    def pid(self):
        try:
            return int(Path(self.pid_file).read_text().strip())
        except (OSError, ValueError):
            return None

    def kill(self):
        """SIGKILL the node's Erlang VM (by the pid it wrote, never by name): a crash, not a shutdown."""
        pid = self.pid()
        if pid is None:
            raise InfraError(f"{self.name}: no pid in {self.pid_file}")
        os.kill(pid, signal.SIGKILL)
        wait(lambda: not pid_alive(pid), 30, f"{self.name} gone")

    def start(self, timeout=180):
        """Start the node (it rejoins its cluster by itself) and wait until it runs."""
        # setsid: the node must outlive this process's session (the runner, a test, a CI step).
        subprocess.Popen(["setsid", "rabbitmq-server", "-detached"],
                         env={**os.environ, "RABBITMQ_CONF_ENV_FILE": self.env_file},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(60)
        wait(self.is_up, timeout, f"RabbitMQ node {self.name}")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (killed, not yet reaped by its parent) is gone for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


class RabbitCluster:
    def __init__(self, env_files):
        self.nodes = [Node.from_env_file(f) for f in env_files]

    def ctl(self, *args, timeout=60):
        """`rabbitmqctl -q ARGS` on the first node that answers (for cluster-wide facts)."""
        errors = []
        for node in self.nodes:
            try:
                return node.ctl(*args, timeout=timeout)
            except InfraError as exc:
                errors.append(str(exc))
        raise InfraError("no node answered: " + "; ".join(errors))

    def node(self, name):
        return next(node for node in self.nodes if node.name == name)

    def connected_nodes(self, vhost):
        """Counter {node: connections of `vhost` on it}."""
        by_port = {node.amqp_port: node.name for node in self.nodes}
        rows = json.loads(self.ctl("list_connections", "vhost", "port", "--formatter", "json") or "[]")
        return Counter(by_port.get(row["port"], f"port {row['port']}") for row in rows if row["vhost"] == vhost)

    def queues(self, vhost):
        """[{name, type, leader, members, online}] of the queues of `vhost`."""
        return json.loads(self.ctl("list_queues", "-p", vhost, "name", "type", "leader", "members", "online",
                                   "--formatter", "json") or "[]")

    def leader(self, vhost, queue):
        return next((q["leader"] for q in self.queues(vhost) if q["name"] == queue), None)

    def replication_problems(self, vhost):
        """Why the queues of `vhost` are not all quorum queues with every node a member and online ([] if they are)."""
        names = {node.name for node in self.nodes}
        problems = []
        for queue in self.queues(vhost):
            if queue["type"] != "quorum":
                problems.append(f"{queue['name']} is a {queue['type']} queue")
            elif set(queue["members"]) != names or set(queue["online"]) != names:
                problems.append(f"{queue['name']}: members {queue['members']}, online {queue['online']}")
        return problems

    def wait_replicated(self, vhost, timeout=60):
        """Wait until `replication_problems(vhost)` is empty; raises InfraError naming them after `timeout` s."""
        try:
            wait(lambda: not self.replication_problems(vhost), timeout, "replication")
        except InfraError:
            raise InfraError(f"queues of {vhost} not fully replicated after {timeout} s: "
                             f"{self.replication_problems(vhost)}") from None

    def victim(self, vhost, queue, leader):
        """The node to kill: the leader of `queue` (`leader` true), else the node most of `vhost`'s connections use."""
        if leader:
            name = self.leader(vhost, queue)
        else:
            connected = self.connected_nodes(vhost).most_common(1)
            name = connected[0][0] if connected else None
        if name not in {node.name for node in self.nodes}:
            raise InfraError(f"no node to kill in {vhost} ({'leader of ' + queue if leader else 'connections'}: "
                             f"{name})")
        return self.node(name)

    def ensure_up(self):
        """Start every node that is down (after a failed run) and wait for it."""
        for node in self.nodes:
            if not node.is_up():
                node.start()
