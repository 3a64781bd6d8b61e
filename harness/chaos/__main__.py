"""Chaos runner: `python -m harness.chaos --orders 500 --faults 12 --seed 1` (see docs/testing.md, "Chaos runs").

Exit status 0 if every invariant held, 1 if one failed."""
import argparse
import dataclasses
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from common.runtime.config import read_env_file
from harness.chaos.faults import CLUSTER_KINDS, KINDS, PG_HA_KINDS, default_kinds
from harness.chaos.runner import Config, print_outcome, run
from harness.infra import Infra


def parse_args(argv):
    defaults = Config()
    parser = argparse.ArgumentParser(prog="python -m harness.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=defaults.orders, help="order requests, at least")
    parser.add_argument("--faults", type=int, default=defaults.faults, help="faults (>= 9 covers every kind)")
    parser.add_argument("--kinds", type=lambda v: tuple(k.strip() for k in v.split(",")), default=None,
                        help=f"comma-separated kinds of fault (default all: {', '.join(KINDS)}; "
                             f"with --pg-ha: {', '.join(PG_HA_KINDS)}); on a RabbitMQ cluster also: "
                             f"{', '.join(CLUSTER_KINDS)}")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the schedule and the load")
    parser.add_argument("--users", type=int, default=defaults.users, help="accounts")
    parser.add_argument("--clients", type=int, default=defaults.clients, help="concurrent clients")
    parser.add_argument("--rate", type=float, default=None,
                        help="operations per second (default: spread the orders over the fault schedule)")
    parser.add_argument("--heartbeat", type=int, default=None,
                        help=f"AMQP heartbeat of the services, seconds; a freeze lasts 3-4 of them (default "
                             f"{defaults.heartbeat}; compose mode: the project's RABBITMQ_HEARTBEAT, else 60)")
    parser.add_argument("--max-recovery", type=float, default=defaults.max_recovery,
                        help="seconds from the last fault to nothing pending")
    parser.add_argument("--settle-timeout", type=float, default=defaults.settle_timeout)
    parser.add_argument("--compose", metavar="DIR",
                        help="run against the docker compose project in DIR (DESTROYS its volumes: down -v)")
    parser.add_argument("--gateway-url", help="compose mode: the published gateway (default localhost:8080)")
    parser.add_argument("--keep", action="store_true", help="keep databases, vhost and logs")
    parser.add_argument("--pg", help="admin DSN of PostgreSQL (default: $SHOP_TEST_PG or 127.0.0.1:5432)")
    parser.add_argument("--pg-cluster", help="its pg_ctlcluster version and name (default: '15 main')")
    parser.add_argument("--amqp", help="AMQP URL without vhost (default: $SHOP_TEST_AMQP or 127.0.0.1:5672)")
    parser.add_argument("--rabbitmq-env", help="rabbitmq-env.conf of the RabbitMQ node (default: the default node)")
    parser.add_argument("--pg-ha", metavar="DIR",
                        help="base directory of a scripts/pg-ha.sh primary + standby (default: $SHOP_TEST_PG_HA); "
                             "--pg then names both hosts, as `scripts/pg-ha.sh env` prints")
    parser.add_argument("--rabbitmq-cluster", action="store_true",
                        help="run on the cluster of scripts/rabbitmq-cluster.sh (its `env`: the URLs and nodes)")
    return parser.parse_args(argv)


def cluster_env():
    """The environment with the variables `scripts/rabbitmq-cluster.sh env` prints (it honours RABBIT_CLUSTER_*)."""
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "rabbitmq-cluster.sh")
    printed = subprocess.run([script, "env"], capture_output=True, text=True, check=True).stdout
    exports = [line.removeprefix("export ").split("=", 1) for line in printed.splitlines()
               if line.startswith("export ")]
    return {**os.environ, **{key: value.strip("'") for key, value in exports}}


def compose_heartbeat(directory):
    """The heartbeat a compose project gives the services (its .env's RABBITMQ_HEARTBEAT), else RabbitMQ's 60 s."""
    env = {**read_env_file(Path(directory) / ".env"), **os.environ}
    return int(env.get("RABBITMQ_HEARTBEAT", 60))


def main(argv=None):
    args = parse_args(argv)
    # Stopped by Ctrl-C or SIGTERM (even when started in the background, where SIGINT is ignored), the run
    # still unwinds: frozen parts resumed, servers started again, processes stopped, databases dropped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    infra = Infra.from_env(cluster_env() if args.rabbitmq_cluster else os.environ)
    infra = dataclasses.replace(infra, **{k: v for k, v in dict(
        pg_admin_dsn=args.pg, pg_cluster=args.pg_cluster, amqp_base=args.amqp,
        rabbitmq_env=args.rabbitmq_env, pg_ha=args.pg_ha).items() if v})
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = Config(orders=args.orders, faults=args.faults, seed=args.seed, kinds=args.kinds or default_kinds(infra),
                    users=args.users,
                    clients=args.clients, rate=args.rate,
                    heartbeat=args.heartbeat or (compose_heartbeat(args.compose) if args.compose else Config.heartbeat),
                    gateway_url=args.gateway_url,
                    max_recovery=args.max_recovery, settle_timeout=args.settle_timeout, infra=infra,
                    compose=args.compose, keep=args.keep)
    print(f"chaos run against {infra.describe() if not args.compose else 'docker compose in ' + args.compose}",
          flush=True)
    outcome = run(config, out=lambda line: print(line, flush=True))
    print_outcome(outcome, out=lambda line: print(line, flush=True))
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
