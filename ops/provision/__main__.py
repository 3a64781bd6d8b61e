"""`python -m ops.provision [--only postgres|rabbitmq] [--pg-admin-dsn DSN] [--rabbitmqctl CMD] [--definitions FILE]`

Each service's own PostgreSQL role owning its database, and its own RabbitMQ user with its permissions; an
operator user for dead letters. Idempotent: run it again to change a password or to hand databases the superuser
created to the roles. Prints what it did, never a password (docs/security-credentials.md).

What to create comes from the services' own settings, in the environment (not .env; a flag of the same name wins):

    ORDER_DB_DSN, PAYMENT_DB_DSN               role, password, database of each service
    ORDER_RABBITMQ_URL, PAYMENT_RABBITMQ_URL   user, password, vhost of each service (one vhost for both)
    OPERATOR_RABBITMQ_URL                      optional: the operator user (BROKER_OPERATOR_USER) of the same vhost
    PG_ADMIN_DSN                               a role that may create roles and databases (e.g. postgres)

RabbitMQ: the definitions are imported with `CMD import_definitions` reading standard input (CMD default
"rabbitmqctl"; e.g. "docker compose exec -T rabbitmq rabbitmqctl"), after `CMD list_users` made sure no named user
is an existing administrator; with --definitions FILE they are written there (mode 600) instead, unless
--rabbitmqctl is given too. Exit status: 0 done, 1 failed (a server or command), 2 bad input (nothing changed)."""
import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import psycopg2

from ops.provision import CommandFailed, ProvisioningError, postgres, rabbitmq

BAD_INPUT, FAILED = 2, 1
POSTGRES_INPUTS = ("ORDER_DB_DSN", "PAYMENT_DB_DSN", "PG_ADMIN_DSN")
RABBITMQ_INPUTS = ("ORDER_RABBITMQ_URL", "PAYMENT_RABBITMQ_URL")
OPTIONAL_INPUTS = ("OPERATOR_RABBITMQ_URL",)


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ops.provision", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("postgres", "rabbitmq"), help="provision one of the two only")
    parser.add_argument("--rabbitmqctl", metavar="CMD", help='the rabbitmqctl command (default "rabbitmqctl")')
    parser.add_argument("--definitions", metavar="FILE", help="write the RabbitMQ definitions to FILE")
    for name in POSTGRES_INPUTS + RABBITMQ_INPUTS + OPTIONAL_INPUTS:
        # Flags show up in `ps`: the environment is the place for passwords.
        parser.add_argument(f"--{name.lower().replace('_', '-')}", default=environ.get(name) or None,
                            metavar=name.rsplit("_", 1)[-1], help=f"default: ${name}")
    args = parser.parse_args(argv)
    needed = (POSTGRES_INPUTS if args.only != "rabbitmq" else ()) + (RABBITMQ_INPUTS if args.only != "postgres" else ())
    missing = [name for name in needed if getattr(args, name.lower()) is None]
    if missing:
        parser.error(f"{', '.join(missing)} missing (environment or flags)")
    return args


class Broker:
    """The RabbitMQ half: definitions built (bad input refused) before anything is changed anywhere."""

    def __init__(self, args: argparse.Namespace) -> None:
        users = [(rabbitmq.BrokerUser.from_url(url), rabbitmq.SERVICE)
                 for url in (args.order_rabbitmq_url, args.payment_rabbitmq_url)]
        if args.operator_rabbitmq_url:
            users.append((rabbitmq.BrokerUser.from_url(args.operator_rabbitmq_url), rabbitmq.OPERATOR))
        self.defs, self.names = rabbitmq.definitions(users), [user.name for user, _ in users]
        self.file = args.definitions
        # Imported unless only written to a file.
        self.command = args.rabbitmqctl or (None if args.definitions else "rabbitmqctl")
        self.run = rabbitmq.rabbitmqctl_command(self.command) if self.command else None

    def check(self) -> None:
        if self.run:
            rabbitmq.check_not_administrators(self.names, self.run)

    def apply(self, say: Callable[[str], None]) -> None:
        if self.file:
            rabbitmq.write_definitions(self.defs, self.file)
            say(f"rabbitmq: definitions written to {self.file} (mode 600: it holds the passwords): "
                f"{rabbitmq.summary(self.defs)}")
        if self.run:
            rabbitmq.import_definitions(self.defs, self.run)
            say(f"rabbitmq: imported with {self.command} import_definitions: {rabbitmq.summary(self.defs)}")


def provision(args: argparse.Namespace, say: Callable[[str], None] = print) -> None:
    """Raises `ProvisioningError` (bad input, nothing changed), `CommandFailed`, `psycopg2.Error`."""
    owners = None if args.only == "rabbitmq" else [postgres.DatabaseOwner.from_dsn(dsn)
                                                   for dsn in (args.order_db_dsn, args.payment_db_dsn)]
    broker = None if args.only == "postgres" else Broker(args)
    if broker:
        broker.check()
    if owners:
        postgres.provision(args.pg_admin_dsn, owners, say)
    if broker:
        broker.apply(say)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    args = parse_args(argv, environ)
    try:
        provision(args)
    except CommandFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return FAILED
    except ProvisioningError as exc:
        print(f"error: {exc}; nothing changed", file=sys.stderr)
        return BAD_INPUT
    except (psycopg2.Error, OSError) as exc:
        print(f"error: {str(exc).strip()}", file=sys.stderr)
        return FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
