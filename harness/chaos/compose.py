"""Compose mode: the same chaos scenario against a docker compose project's containers.

Generic over any project with the services postgres, rabbitmq, gateway, order and payment (CONTRACT.md) and the
database names of its `.env` (ORDER_DB_NAME / PAYMENT_DB_NAME, default orders / payments). The run starts
from empty volumes (`docker compose down -v`), so never point it at a project whose data you want to keep.
The databases are read through `psql` inside the postgres container: only the gateway is published."""
import contextlib
import json
import threading
import time
from decimal import Decimal
from pathlib import Path

from common.config import read_env_file
from harness.infra import InfraError, run, wait

PARTS = ("gateway", "order", "payment")


class Compose:
    def __init__(self, directory):
        self.directory = Path(directory).resolve()
        self.env = read_env_file(self.directory / ".env")

    def __call__(self, *args, timeout=300):
        return run(["docker", "compose", "--project-directory", str(self.directory), *args], timeout=timeout)

    def container(self, service):
        return self("ps", "-a", "-q", service).strip()

    def inspect(self, service, template):
        return run(["docker", "inspect", "-f", template, self.container(service)]).strip()

    def is_ready(self, service):
        """Healthy, or running if the service has no health check."""
        state = self.inspect(service, "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}")
        return state in ("running healthy", "running ")

    def wait_ready(self, service, timeout=180):
        wait(lambda: self.is_ready(service), timeout, f"compose service {service}")


class Psql:
    """Reads one database through `psql` in the postgres container (rows as tuples, JSON-typed)."""

    def __init__(self, compose, dbname):
        self.compose, self.dbname = compose, dbname

    def query(self, sql, params=None):
        if params:
            raise ValueError("Psql reads take no parameters")
        wrapped = f"SELECT coalesce(json_agg(row(t.*)), '[]') FROM ({sql}) t"
        user = self.compose.env.get("POSTGRES_USER", "postgres")
        out = self.compose("exec", "-T", "postgres", "psql", "-U", user, "-d", self.dbname, "-At", "-c", wrapped,
                           timeout=60)
        # row(t.*) renders as {"f1": ..., "f2": ...} in column order.
        return [tuple(row.values()) for row in json.loads(out, parse_float=Decimal)]


class ComposeTargets:
    """Faults on containers (see harness.chaos.faults for the interface)."""

    def __init__(self, compose):
        self.compose = compose
        self.busy = threading.Lock()
        self._restarts = {}

    def kill(self, part, pause):
        self.compose("kill", part)
        time.sleep(pause)
        self.compose("start", part)
        self.compose.wait_ready(part)

    def freeze(self, part, seconds):
        # The cgroup freezer stops every process of the container, as SIGSTOP does.
        self.compose.wait_ready(part)
        self.compose("pause", part)
        try:
            time.sleep(seconds)
        finally:
            self.compose("unpause", part)

    def broker_app(self, pause):
        self.compose("exec", "-T", "rabbitmq", "rabbitmqctl", "stop_app")
        time.sleep(pause)
        self.compose("exec", "-T", "rabbitmq", "rabbitmqctl", "start_app")
        self.compose("exec", "-T", "rabbitmq", "rabbitmqctl", "await_startup")

    def broker_restart(self, pause):
        self.compose("stop", "rabbitmq")
        time.sleep(pause)
        self.compose("start", "rabbitmq")
        self.compose.wait_ready("rabbitmq")

    def db_restart(self, immediate):
        if immediate:
            # SIGQUIT is PostgreSQL's immediate shutdown: no checkpoint, crash recovery at the next start.
            self.compose("kill", "-s", "SIGQUIT", "postgres")
            wait(lambda: self.compose.inspect("postgres", "{{.State.Running}}") != "true", 60,
                 "postgres to exit")
            self.compose("start", "postgres")
        else:
            self.compose("restart", "postgres")
        self.compose.wait_ready("postgres")

    def ensure_up(self):
        for service in ("postgres", "rabbitmq", *PARTS):
            with contextlib.suppress(InfraError):
                self.compose("unpause", service)
        with contextlib.suppress(InfraError):
            self.compose("exec", "-T", "rabbitmq", "rabbitmqctl", "start_app")
        self.compose("up", "-d")

    def crashed(self):
        """Parts whose container restarted (restart policy) while no fault acted on it."""
        if not self.busy.acquire(blocking=False):
            return []
        try:
            dead = []
            for part in PARTS:
                count = int(self.compose.inspect(part, "{{.RestartCount}}"))
                if count > self._restarts.setdefault(part, count):
                    dead.append((part, self.compose.inspect(part, "{{.State.ExitCode}}")))
                self._restarts[part] = count
            return dead
        finally:
            self.busy.release()


@contextlib.contextmanager
def compose_system(config):
    """The compose project from empty volumes: (gateway url, order db, payment db, targets)."""
    compose = Compose(config.compose)
    compose("down", "-v")
    compose("up", "-d", "--build", timeout=1800)
    for service in ("postgres", "rabbitmq", *PARTS):
        compose.wait_ready(service)
    targets = ComposeTargets(compose)
    url = config.gateway_url or f"http://localhost:{compose.env.get('GATEWAY_HOST_PORT', '8080')}"
    try:
        yield (url, Psql(compose, compose.env.get("ORDER_DB_NAME", "orders")),
               Psql(compose, compose.env.get("PAYMENT_DB_NAME", "payments")), targets)
    finally:
        targets.ensure_up()
