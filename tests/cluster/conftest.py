"""A three-node RabbitMQ cluster of this test session's own (scripts/rabbitmq-cluster.sh on ports and node
names no one else uses), destroyed afterwards. PostgreSQL is the harness's usual server (own databases)."""
import dataclasses
import os
import shutil
import subprocess

import pytest

from harness.infra import INFRA, Infra
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
