"""Which PostgreSQL cluster and RabbitMQ node the harness uses, and how to restart them.

Defaults are the machine's own `15 main` on 127.0.0.1:5432 and the default RabbitMQ node on 5672 (what CI
uses). On a shared machine, point the harness at private instances instead (`scripts/private-brokers.sh`):

    SHOP_TEST_PG             admin DSN; the harness's own databases live on the same server
    SHOP_TEST_PG_CLUSTER     `pg_ctlcluster` version and name of that server, e.g. "15 chaos"
    SHOP_TEST_AMQP           AMQP URL without vhost; each run adds its own vhost (a cluster: comma-separated URLs)
    SHOP_TEST_RABBITMQ_ENV   a rabbitmq-env.conf naming the node (RABBITMQ_CONF_ENV_FILE); empty = default node
    SHOP_TEST_PG_HA          base directory of a `scripts/pg-ha.sh` primary + standby; SHOP_TEST_PG then names
                             both hosts (`postgresql://postgres@h:5441,h:5442/postgres?target_session_attrs=...`)
                             and the stack's services get multi-host DSNs
    SHOP_TEST_RABBITMQ_NODES a cluster's nodes, comma-separated rabbitmq-env.conf files (scripts/rabbitmq-cluster.sh)
"""
import contextlib
import os
import secrets
import subprocess
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import parse_dsn
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed
from yarl import URL


class InfraError(RuntimeError):
    """A PostgreSQL or RabbitMQ control command failed or the server did not come back in time."""


@dataclass(frozen=True)
class Infra:
    pg_admin_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    pg_cluster: str = "15 main"
    amqp_base: str = "amqp://guest:guest@127.0.0.1:5672/"
    rabbitmq_env: str = ""
    pg_ha: str = ""
    rabbitmq_nodes: tuple = ()

    @classmethod
    def from_env(cls, environ=os.environ):
        defaults = cls()
        return cls(pg_admin_dsn=environ.get("SHOP_TEST_PG") or defaults.pg_admin_dsn,
                   pg_cluster=environ.get("SHOP_TEST_PG_CLUSTER") or defaults.pg_cluster,
                   amqp_base=environ.get("SHOP_TEST_AMQP") or defaults.amqp_base,
                   rabbitmq_env=environ.get("SHOP_TEST_RABBITMQ_ENV") or defaults.rabbitmq_env,
                   pg_ha=environ.get("SHOP_TEST_PG_HA") or defaults.pg_ha,
                   rabbitmq_nodes=tuple(f for f in environ.get("SHOP_TEST_RABBITMQ_NODES", "").split(",") if f))

    def describe(self):
        node = f"node from {self.rabbitmq_env}" if self.rabbitmq_env else "default node"
        pg = f"pg_auto_failover in {self.pg_ha}" if self.pg_ha else self.pg_cluster
        return f"PostgreSQL {pg} ({self.pg_admin_dsn}), RabbitMQ {node} ({self.amqp_base})"

    # --- PostgreSQL -------------------------------------------------------------------------------

    @property
    def pg_port(self):
        return int(parse_dsn(self.pg_admin_dsn).get("port", 5432))

    @property
    def amqp_port(self):
        return urlsplit(self.amqp_base.split(",")[0]).port or 5672

    def dsn(self, dbname, user=None, password=None):
        """A URL DSN (`postgresql://user@host:port/dbname`) for database `dbname` on the harness's server, as
        the admin DSN's user or as `user` with `password` (URL-safe names and passwords only)."""
        params = parse_dsn(self.pg_admin_dsn)
        if user is None:
            user, password = params.get("user", "postgres"), params.get("password")
        password = f":{password}" if password else ""
        if "," in params.get("host", ""):  # libpq's multi-host form: every host, and the same attributes
            names, ports = params["host"].split(","), params.get("port", "5432").split(",")
            hosts = ",".join(f"{h}:{p}" for h, p in zip(names, ports * len(names) if len(ports) == 1 else ports))
            attrs = f"?target_session_attrs={params.get('target_session_attrs', 'read-write')}"
            return f"postgresql://{user}{password}@{hosts}/{dbname}{attrs}"
        return f"postgresql://{user}{password}@{params.get('host', '127.0.0.1')}:{self.pg_port}/{dbname}"

    def drop_database(self, name):
        self.admin_sql(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def drop_role(self, name):
        """Drop role `name` (its databases dropped first: a role that owns one cannot be dropped)."""
        self.admin_sql(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    def admin_sql(self, statement, dsn=None):
        """Run `statement` as the admin, outside a transaction, on `dsn` (default: the admin DSN's database)."""
        conn = psycopg2.connect(dsn or self.pg_admin_dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def pg_ctl(self, action, *options):
        run(["pg_ctlcluster", "--skip-systemctl-redirect", *self.pg_cluster.split(), action, *options])

    def pg_restart(self, immediate=False):
        self.pg_ctl("restart", *(["-m", "immediate"] if immediate else []))
        self.wait_pg()

    def pg_is_up(self):
        host = parse_dsn(self.pg_admin_dsn).get("host", "127.0.0.1")
        return subprocess.run(["pg_isready", "-q", "-h", host, "-p", str(self.pg_port)]).returncode == 0

    def wait_pg(self, timeout=60):
        wait(self.pg_is_up, timeout, f"PostgreSQL {self.pg_cluster}")

    def ensure_pg(self):
        """Start PostgreSQL if it is down (after a failed run) and wait for it."""
        if self.pg_ha:
            from harness.pg_ha import PgHa  # it builds on this module
            return PgHa(self.pg_ha).ensure_up()
        if not self.pg_is_up():
            try:
                self.pg_ctl("start")
            except InfraError:
                pass  # "already running" while it is still recovering: waiting below decides
            self.wait_pg()

    # --- RabbitMQ ---------------------------------------------------------------------------------

    def amqp_url(self, vhost, heartbeat=None, user=None, password=None):
        """The AMQP URL of `vhost` (on a cluster, comma-separated: one per node), as the base URL's user or as
        `user` with `password`; `heartbeat` (seconds) is negotiated with the broker by aio-pika."""
        query = f"?{urlencode({'heartbeat': heartbeat})}" if heartbeat else ""
        bases = self.amqp_base.split(",")
        if user is not None:
            bases = [str(URL(base).with_user(user).with_password(password)) for base in bases]
        return ",".join(base + vhost + query for base in bases)

    @property
    def amqp_user(self):
        """The user of the base URL: the harness's RabbitMQ administrator."""
        return URL(self.amqp_base.split(",")[0]).user or "guest"

    @property
    def cluster(self):
        """The `harness.cluster.RabbitCluster` of `rabbitmq_nodes`, or None on a single node."""
        from harness.cluster import RabbitCluster  # it builds on this module
        return RabbitCluster(self.rabbitmq_nodes) if self.rabbitmq_nodes else None

    def _rabbit_env(self):
        return {**os.environ, **({"RABBITMQ_CONF_ENV_FILE": self.rabbitmq_env} if self.rabbitmq_env else {})}

    def add_vhost(self, name):
        """The vhost `name`, with every permission there for the base URL's user."""
        self.rabbitmqctl("add_vhost", name)
        self.rabbitmqctl("set_permissions", "-p", name, self.amqp_user, ".*", ".*", ".*")

    @contextlib.contextmanager
    def own_vhost(self, prefix):
        """A vhost of its own (`prefix` and a random suffix) that the base URL's user may use, deleted afterwards:
        what a test's services or queues do there meets no other test's."""
        name = f"{prefix}_{secrets.token_hex(4)}"
        self.add_vhost(name)
        try:
            yield name
        finally:
            self.rabbitmqctl("delete_vhost", name)

    def rabbitmqctl(self, *args, timeout=60, input=None):
        """Run `rabbitmqctl -q ARGS` against the chosen node (`input` on its standard input); returns its output."""
        return run(["rabbitmqctl", "-q", *args], env=self._rabbit_env(), timeout=timeout, input=input)

    def rabbit_app_is_up(self):
        try:
            self.rabbitmqctl("await_startup", "--timeout", "5", timeout=20)
            return True
        except InfraError:
            return False

    def wait_rabbit(self, timeout=120):
        wait(self.rabbit_app_is_up, timeout, "RabbitMQ")

    def rabbit_stop_app(self):
        self.rabbitmqctl("stop_app")

    def rabbit_start_app(self):
        self.rabbitmqctl("start_app")
        self.wait_rabbit()

    def rabbit_stop_node(self):
        self.rabbitmqctl("stop")

    def rabbit_start_node(self):
        # setsid: the node must outlive this process's session (the runner, a test, a CI step).
        subprocess.Popen(["setsid", "rabbitmq-server", "-detached"], env=self._rabbit_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).wait(60)
        self.wait_rabbit()

    def ensure_rabbit(self):
        """Bring RabbitMQ back whatever state a failed run left it in (app stopped or node down)."""
        if self.rabbit_app_is_up():
            return
        try:
            self.rabbit_start_app()
        except InfraError:
            self.rabbit_start_node()

    def ensure_up(self):
        self.ensure_pg()
        if self.rabbitmq_nodes:
            self.cluster.ensure_up()
        self.ensure_rabbit()


def run(command, env=None, timeout=120, input=None):
    """Run a control command (`input` on its standard input); raises `InfraError` with its output if it fails."""
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"{' '.join(command)} timed out") from exc
    if done.returncode:
        raise InfraError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
    return done.stdout


def wait(check, timeout, what):
    """Poll `check()` until it is true; raises `InfraError` after `timeout` seconds."""
    try:
        for attempt in Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(0.2), reraise=True,
                                retry=retry_if_exception_type(AssertionError)):
            with attempt:
                assert check()
    except AssertionError:
        raise InfraError(f"{what} not up after {timeout} s") from None


INFRA = Infra.from_env()
