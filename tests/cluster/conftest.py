"""The clustered topologies, each of this test session's own (ports, names and directories no one else uses)
and destroyed afterwards: a pg_auto_failover primary + standby (scripts/pg-ha.sh), and a three-node RabbitMQ
cluster (scripts/rabbitmq-cluster.sh; PostgreSQL is then the harness's usual server, own databases)."""
import dataclasses
import os
import shutil
import subprocess

import pytest

from harness.infra import INFRA, Infra
from harness.pg_ha import PgHa
from harness.stack import ROOT

SCRIPT = str(ROOT / "scripts" / "rabbitmq-cluster.sh")
# Beside the script's defaults (5681-5683, shop1-3), so that a developer's own cluster is left alone.
CLUSTER = {
    "RABBIT_CLUSTER_NODES": "shoptest1 shoptest2 shoptest3",
    "RABBIT_CLUSTER_AMQP_PORTS": "5691 5692 5693",
    "RABBIT_CLUSTER_DIST_PORTS": "25691 25692 25693",
    "RABBIT_CLUSTER_BASE": "/var/tmp/shop-rabbitmq-cluster-test",
}


def script(action):
    done = subprocess.run([SCRIPT, action], env={**os.environ, **CLUSTER}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"rabbitmq-cluster.sh {action}: {done.stderr[-3000:]}"
    return done.stdout


def exported(printed):
    """{name: value} of the `export NAME='value'` lines the script prints."""
    pairs = [line.removeprefix("export ").split("=", 1) for line in printed.splitlines() if line.startswith("export ")]
    return {name: value.strip("'") for name, value in pairs}


@pytest.fixture(scope="session")
def cluster_infra():
    """`harness.infra.Infra` pointed at the session's cluster (PostgreSQL as usual)."""
    if shutil.which("rabbitmq-server") is None:
        pytest.skip("Debian's rabbitmq-server is not installed")
    try:
        variables = exported(script("start"))
        yield dataclasses.replace(INFRA, **{
            field: value for field, value in vars(Infra.from_env(variables)).items()
            if field in ("amqp_base", "rabbitmq_env", "rabbitmq_nodes")})
    finally:
        script("destroy")


# Its own ports and directory: never the `15 main` cluster (5432), nor a pair someone started with the
# script's defaults (5440-5442, /var/tmp/shop-pg-ha).
PORTS = {"PG_HA_MONITOR_PORT": "5445", "PG_HA_NODE1_PORT": "5446", "PG_HA_NODE2_PORT": "5447"}
BASE = "/var/tmp/shop-pg-ha-tests"


@pytest.fixture(scope="session")
def pg_ha():
    """A pg_auto_failover monitor, primary and synchronous standby built by scripts/pg-ha.sh, destroyed after."""
    formation = PgHa(BASE, PORTS)
    formation.destroy()  # what a killed earlier run left behind
    formation.start()
    try:
        yield formation
    finally:
        formation.destroy()


@pytest.fixture(scope="session")
def ha_infra(pg_ha):
    """The harness's servers with PostgreSQL replaced by the pair: stacks get multi-host DSNs."""
    hosts = ",".join(f"127.0.0.1:{PORTS[f'PG_HA_NODE{i}_PORT']}" for i in (1, 2))
    return dataclasses.replace(INFRA, pg_admin_dsn=f"postgresql://postgres@{hosts}/postgres"
                                                   "?target_session_attrs=read-write",
                               pg_cluster="", pg_ha=BASE)


def node_dsn(node, dbname="postgres"):
    return f"postgresql://postgres@127.0.0.1:{node.port}/{dbname}"
