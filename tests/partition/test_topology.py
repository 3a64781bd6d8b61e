"""harness.netns's sides and rules, without a topology running (no root needed): what a cut drops."""
import pytest

from harness.netns import Topology, TopologyError

NODES = {"r1": "10.0.0.11", "r2": "10.0.0.12", "r3": "10.0.0.13", "monitor": "10.0.0.20", "pg1": "10.0.0.21",
         "pg2": "10.0.0.22", "gateway": "10.0.0.30", "order": "10.0.0.31", "payment": "10.0.0.32"}
GROUPS = {"rabbit": ["r1", "r2", "r3"], "postgres": ["monitor", "pg1", "pg2"],
          "services": ["gateway", "order", "payment"]}


class RecordedRules(Topology):
    """A topology whose nft commands are kept instead of run."""

    def _nft(self, *args):
        self.commands.append(" ".join(args))
        return ""


def built(kind):
    """A topology of `kind` over NODES and GROUPS, with nothing behind it."""
    topology = kind(nodes=NODES, namespaces={node: f"t-{node}" for node in NODES}, groups=GROUPS,
                    bridge_namespace="t-br", table="t", subnet="10.0.0.0/24", gateway_url="", order_db="",
                    payment_db="", pg_ports={}, rabbit_env_files={}, base="", timings={})
    topology.commands = []
    return topology


@pytest.fixture
def topology():
    return built(RecordedRules)


def test_a_side_is_a_node_a_group_the_others_or_a_list_of_them(topology):
    assert topology.members("pg1") == ["pg1"]
    assert topology.members("services") == ["gateway", "order", "payment"]
    assert topology.members(["r1", "postgres"]) == ["monitor", "pg1", "pg2", "r1"]
    assert topology.members("others", ["pg1"]) == sorted(set(NODES) - {"pg1"})
    with pytest.raises(TopologyError, match="no node or group 'pg3'"):
        topology.members("pg3")


def test_a_cut_drops_both_ways_and_a_one_way_cut_one(topology):
    topology.cut("order", ["r2", "r3"])
    topology.cut("pg1", "pg2", one_way=True)
    assert topology.commands == [
        "add rule bridge t forward ip saddr { 10.0.0.31 } ip daddr { 10.0.0.12, 10.0.0.13 } drop",
        "add rule bridge t forward ip saddr { 10.0.0.12, 10.0.0.13 } ip daddr { 10.0.0.31 } drop",
        "add rule bridge t forward ip saddr { 10.0.0.21 } ip daddr { 10.0.0.22 } drop",
    ]


def test_a_node_cut_from_the_others_is_cut_from_every_other_node(topology):
    topology.cut("others", "pg1")
    everyone_else = ", ".join(NODES[node] for node in sorted(set(NODES) - {"pg1"}))
    rule = "add rule bridge t forward ip saddr {{ {} }} ip daddr {{ {} }} drop"
    assert topology.commands == [rule.format(everyone_else, "10.0.0.21"), rule.format("10.0.0.21", everyone_else)]


def test_a_loss_drops_a_share_of_the_packets_both_ways_at_random(topology):
    topology.lose("order", "r1", 20)
    assert topology.commands == [
        "add rule bridge t forward ip saddr { 10.0.0.31 } ip daddr { 10.0.0.11 } numgen random mod 100 < 20 drop",
        "add rule bridge t forward ip saddr { 10.0.0.11 } ip daddr { 10.0.0.31 } numgen random mod 100 < 20 drop",
    ]
    with pytest.raises(ValueError, match="not 0"):
        topology.lose("order", "r1", 0)


def test_heal_flushes_every_cut(topology):
    topology.heal()
    assert topology.commands == ["flush chain bridge t forward"]


class RecordedRabbitmqctl(Topology):
    """A topology whose RabbitMQ nodes answer `cluster_status` from `statuses` (None: the node does not answer) and
    whose other rabbitmqctl commands are kept instead of run."""

    def _cluster_status(self, node):
        return self.statuses[node]

    def rabbitmqctl(self, node, *args, timeout=30):
        self.commands.append(f"{node} {' '.join(args)}")
        return ""


def operator_facing(statuses):
    topology = built(RecordedRabbitmqctl)
    topology.statuses = statuses
    return topology


def status(partitions=None):
    return {"running_nodes": ["rabbit@r1", "rabbit@r2"], "partitions": partitions or {}}


def test_the_operators_step_restarts_the_nodes_a_partition_list_names_and_starts_a_stopped_one():
    # r1 still lists r2 as the other side of a partition long healed; r3's application was left stopped.
    topology = operator_facing({"r1": status({"rabbit@10.0.0.12": ["rabbit@10.0.0.11"]}), "r2": status(),
                                "r3": None})
    assert topology.restart_nodes_listing_partitions() == ["r2", "r3"]
    assert topology.commands == ["r3 start_app", "r2 stop_app", "r2 start_app"]


def test_the_operators_step_leaves_a_whole_cluster_alone():
    topology = operator_facing({"r1": status(), "r2": status(), "r3": status()})
    assert topology.restart_nodes_listing_partitions() == []
    assert topology.commands == []
