"""The stack on a three-node RabbitMQ cluster with quorum queues, under orders and top-ups from concurrent
clients, while the node the services use and later the leader of `outbox_os` are SIGKILLed and brought back.

Short form (default, CI): two node kills. Long form: SHOP_CLUSTER_LONG=1 (5,000 orders, 30 node kills)."""
import logging
import os

from harness.chaos.runner import Config, print_outcome, run

LONG = os.environ.get("SHOP_CLUSTER_LONG") == "1"


def test_killing_the_services_node_and_the_queue_leader_loses_nothing(cluster_infra, caplog):
    config = Config(orders=5000 if LONG else 150, faults=30 if LONG else 2, seed=13, kinds=("rabbitmq node kill",),
                    clients=16 if LONG else 8, infra=cluster_infra, env={"QUEUE_TYPE": "quorum"})
    with caplog.at_level(logging.WARNING, logger="harness.chaos.faults"):
        outcome = run(config)
    print_outcome(outcome)
    # Every invariant, recovery within the runner's 10 s of the last node's return, and each fault counted as
    # recovered only once every queue of the run was a quorum queue with all three members online again.
    assert outcome.ok, outcome.report.table()
    kills = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rabbitmq node kill")]
    assert len(kills) == config.faults
    assert "the services' node" in kills[0] and "leader of outbox_os" in kills[1], kills
