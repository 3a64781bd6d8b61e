"""The partition tests: the whole topology in network namespaces (scripts/netns-cluster.sh), faults as nft rules.

They need root (namespaces, nft) and start 9 nodes: only where asked, SHOP_PARTITIONS=short (CI's run: one fault of
each main kind) or SHOP_PARTITIONS=1 (every kind, SHOP_PARTITION_ROUNDS times). Asked there, nothing is skipped: a
missing privilege or tool fails the run, with the reason."""
import os
import shutil
from pathlib import Path

import pytest

from harness import netns

# "short", "1" (every kind), or unset: skipped.
PARTITIONS = os.environ.get("SHOP_PARTITIONS", "")
requires_partitions_opt_in = pytest.mark.skipif(
    PARTITIONS not in ("short", "1"),
    reason="builds network namespaces and a 9-node topology as root; set SHOP_PARTITIONS=short or 1 to run it")


@pytest.fixture(scope="module")
def topology():
    """The topology, started for this module and torn down after it (processes, namespaces, files)."""
    if os.geteuid() != 0:
        pytest.fail(f"SHOP_PARTITIONS={PARTITIONS} needs root: network namespaces and nft rules")
    # A topology left by a run that crashed has this run's namespace names and ports: it goes first (one
    # topology per machine; stopping none is harmless).
    netns.stop()
    try:
        topology = netns.start()
    except BaseException:
        netns.stop()
        raise
    try:
        yield topology
    finally:
        topology.heal()
        for node in topology.nodes:
            topology.thaw(node)
        keep_logs(netns.DEFAULT_BASE, LOGS)
        netns.stop()


# Where each run's node logs are kept (the topology's own directory goes with it), for the reader of a failure.
LOGS = Path(os.environ.get("SHOP_PARTITIONS_LOGS", "/var/tmp/shop-netns-logs"))


def keep_logs(base, logs):
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    for log in base.glob("*.log"):
        shutil.copy(log, logs / log.name)
    for node in ("r1", "r2", "r3"):
        shutil.copytree(base / node / "log", logs / node, dirs_exist_ok=True, ignore_dangling_symlinks=True)
