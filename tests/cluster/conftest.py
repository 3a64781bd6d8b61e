import dataclasses

import pytest

from harness.infra import INFRA
from harness.pg_ha import PgHa

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
