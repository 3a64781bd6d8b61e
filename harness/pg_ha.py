"""The PostgreSQL primary + synchronous standby of `scripts/pg-ha.sh` (pg_auto_failover), as the tests and the
chaos runner drive it: who is primary, lose that node, bring it back as the standby."""
import os
import time
from dataclasses import dataclass
from pathlib import Path

from harness.infra import InfraError, run, wait

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "pg-ha.sh"
# pg_auto_failover's states of a node that accepts writes: with its standby in sync (`primary`), or alone
# while the standby is away (`wait_primary`: synchronous replication is off then).
WRITABLE = ("primary", "wait_primary")


@dataclass(frozen=True)
class Node:
    name: str
    port: int
    reported: str
    assigned: str


@dataclass
class Failover:
    """One failover (times are `time.monotonic()`): the SIGKILL, the new primary, the old one back as standby."""
    killed: str
    promoted: str
    killed_at: float
    promoted_at: float
    settled_at: float

    @property
    def seconds_to_primary(self):
        return self.promoted_at - self.killed_at

    @property
    def seconds_to_standby(self):
        return None if self.settled_at is None else self.settled_at - self.promoted_at


class PgHa:
    """The formation under `base` (the script's PG_HA_BASE); its ports are the ones it was created with."""

    def __init__(self, base, ports=None):
        self.base = base
        self.ports = ports or {}  # PG_HA_*_PORT for `start` of a new formation (the script remembers them)

    def script(self, *args, timeout=240):
        env = {**os.environ, **self.ports, "PG_HA_BASE": self.base}
        return run([str(SCRIPT), *args], env=env, timeout=timeout)

    def start(self):
        return self.script("start")

    def destroy(self):
        self.script("destroy")

    def nodes(self):
        try:
            lines = self.script("roles", timeout=20).split()
        except InfraError:
            return []  # the monitor is not answering (yet)
        return [Node(name, int(port), reported, assigned) for name, port, reported, assigned
                in (lines[i:i + 4] for i in range(0, len(lines), 4))]

    def primary(self):
        """The node that accepts writes now, or None (during a failover)."""
        return next((n for n in self.nodes() if n.reported in WRITABLE and n.assigned in WRITABLE), None)

    def is_settled(self):
        """One primary with its standby in sync: the formation can lose a node without losing a commit."""
        states = sorted((n.reported, n.assigned) for n in self.nodes())
        return states == [("primary", "primary"), ("secondary", "secondary")]

    def wait_settled(self, timeout=120):
        wait(self.is_settled, timeout, "pg_auto_failover primary + secondary")

    def failover(self, timeout=120, rejoin=True):
        """SIGKILL the primary's keeper and postmaster (the machine is lost), wait until the monitor has
        promoted the standby, start the lost node again and (`rejoin`) wait until it is back as the standby;
        without `rejoin`, `settled_at` is None and `wait_settled` is the caller's."""
        self.wait_settled(timeout)
        old = self.primary()
        self.script("kill-node", old.name)
        started = time.monotonic()  # once the script is done: starting it takes a second on a busy machine
        wait(lambda: (self.primary() or old).name != old.name, timeout, f"promotion after losing {old.name}")
        promoted, new = time.monotonic(), self.primary()
        self.script("run-node", old.name)
        if rejoin:
            self.wait_settled(timeout)
        return Failover(old.name, new.name, started, promoted, time.monotonic() if rejoin else None)

    def ensure_up(self):
        """After a failed run: start whatever keeper is down and wait for primary + standby."""
        self.start()
        self.wait_settled()
