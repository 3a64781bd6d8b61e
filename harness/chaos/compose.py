"""Compose mode: the same chaos scenario against a docker compose project's containers.

Generic over any project with the services postgres, rabbitmq, gateway, order and payment (CONTRACT.md) and the
database names of its `.env` (ORDER_DB_NAME / PAYMENT_DB_NAME, default orders / payments). The run starts
from empty volumes (`docker compose down -v`), so never point it at a project whose data you want to keep.
The databases are read through `psql` inside the postgres container (only the gateway is published), as
POSTGRES_USER, the superuser: with least privilege (docker-compose.yml) each service's role may connect to its
own database only. A project's one-shot containers (docker-compose.yml's provisioning) run again at every `up`.

With AUTH_MODE=jwt (this project's .env) the project must also have the development token issuer, service `issuer`,
published on ISSUER_HOST_PORT (docker-compose.yml does both): every request the run sends to the gateway carries
an admin token (`shop-admin`, scope shop:admin, with DEV_ISSUER_SECRET) from it. What is tested here is the flow
under faults, not who may do what (tests/e2e/test_authentication.py covers that).

Either compose works, found at run time: `docker compose` (v2, the Docker CLI's plugin) or `docker-compose` (v1,
what Debian ships), against Docker or podman's Docker-compatible socket (DOCKER_HOST). The project name is
COMPOSE_PROJECT_NAME or the directory's name; the environment overrides the project's `.env`, as in compose."""
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path

from common.runtime.config import read_env_file
from harness.compose import IssuerClient, check_serving
from harness.infra import InfraError, run, wait

PARTS = ("gateway", "order", "payment")
SERVICES = ("postgres", "rabbitmq", *PARTS)


def compose_command():
    """`docker compose` if the Docker CLI has the compose plugin, else `docker-compose`; InfraError if neither."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                 timeout=30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise InfraError("compose mode needs `docker compose` (v2) or `docker-compose` (v1); neither is installed")


def engine_command():
    """The CLI that inspects containers: `docker` (also against podman's socket), else `podman`."""
    for name in ("docker", "podman"):
        if shutil.which(name):
            return [name]
    raise InfraError("compose mode needs the docker or podman command")


def is_podman():
    """True if the engine behind the compose commands is podman (its Docker-compatible API says so)."""
    try:
        out = run([*engine_command(), "version", "--format", "{{json .Server}}"], timeout=30)
    except InfraError:
        return False
    return "podman" in out.lower()


class Compose:
    def __init__(self, directory, command=None):
        self.directory = Path(directory).resolve()
        self.env = {**read_env_file(self.directory / ".env"), **os.environ}
        # Named explicitly, so that v1 and v2 (which normalise a directory's name differently) agree.
        self.project = self.env.get("COMPOSE_PROJECT_NAME") or re.sub(r"[^a-z0-9]", "", self.directory.name.lower())
        self.command = command or compose_command()
        self.authenticated = self.env.get("AUTH_MODE") == "jwt"
        # With authentication on, the issuer is part of the system: waited for and its log kept (never faulted).
        self.services = (*SERVICES, "issuer") if self.authenticated else SERVICES
        self._containers = {}

    def __call__(self, *args, timeout=300):
        return run([*self.command, "--project-name", self.project, "--project-directory", str(self.directory),
                    *args], timeout=timeout)

    def container(self, service):
        # Containers keep their ids through kill / stop / start / pause; only `up` may replace one.
        if service not in self._containers:
            self._containers[service] = self("ps", "-a", "-q", service).strip()
        return self._containers[service]

    def forget_containers(self):
        self._containers.clear()

    def container_action(self, action, service, *options, timeout=120):
        """`kill`, `start`, `pause`, ... on a service's container through the engine. docker-compose v1 picks the
        containers to act on by their state, which it misreads under podman ("No containers to unpause")."""
        return run([*engine_command(), action, *options, self.container(service)], timeout=timeout)

    def exec(self, service, *args, timeout=120):
        """Run a command in a service's container (through the engine: much cheaper than a compose process)."""
        return run([*engine_command(), "exec", self.container(service), *args], timeout=timeout)

    def save_logs(self, directory):
        """Each service's container log, timestamped, as `directory`/SERVICE.log (all its runs: kills and
        restarts keep the container)."""
        for service in self.services:
            with open(Path(directory) / f"{service}.log", "w") as log:
                subprocess.run([*engine_command(), "logs", "--timestamps", self.container(service)], stdout=log,
                               stderr=subprocess.STDOUT, timeout=300)

    def inspect(self, service, template):
        return run([*engine_command(), "inspect", "-f", template, self.container(service)]).strip()

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
        out = self.compose.exec("postgres", "psql", "-U", user, "-d", self.dbname, "-At", "-c", wrapped, timeout=60)
        # row(t.*) renders as {"f1": ..., "f2": ...} in column order.
        return [tuple(row.values()) for row in json.loads(out, parse_float=Decimal)]


class ComposeTargets:
    """Faults on containers (see harness.chaos.faults for the interface)."""

    CRASH_CHECK_INTERVAL = 5.0

    def __init__(self, compose):
        self.compose = compose
        self.busy = threading.Lock()
        self._restarts = {}
        self._next_crash_check = 0.0

    def kill(self, part, pause):
        self.compose.container_action("kill", part)
        time.sleep(pause)
        self.compose.container_action("start", part)
        self.compose.wait_ready(part)

    def freeze(self, part, seconds):
        # The cgroup freezer stops every process of the container, as SIGSTOP does.
        self.compose.wait_ready(part)
        self.persist("pause", part)
        try:
            time.sleep(seconds)
        finally:
            self.persist("unpause", part)

    def persist(self, action, part, tries=3):
        """`pause` / `unpause`, tried again: runc's freezer now and then fails to freeze a container whose
        processes are starting (a healthcheck being exec'd into it), `runc pause ... exit status 1`."""
        for attempt in range(tries):
            try:
                return self.compose.container_action(action, part)
            except InfraError:
                if attempt == tries - 1:
                    raise
                time.sleep(1.0)

    def broker_app(self, pause):
        self.compose.exec("rabbitmq", "rabbitmqctl", "stop_app")
        time.sleep(pause)
        self.compose.exec("rabbitmq", "rabbitmqctl", "start_app")
        self.compose.exec("rabbitmq", "rabbitmqctl", "await_startup")

    def broker_restart(self, pause):
        self.compose.container_action("stop", "rabbitmq")
        time.sleep(pause)
        self.compose.container_action("start", "rabbitmq")
        # Back when the node has booted, not when the next healthcheck says so: each check starts an Erlang VM
        # for `rabbitmq-diagnostics`, which on a loaded machine outlasts the check's 5 s timeout again and again.
        wait(lambda: self.node_booted(), 300, "rabbitmq node")

    def node_booted(self):
        try:
            self.compose.exec("rabbitmq", "rabbitmqctl", "await_startup", "--timeout", "60", timeout=90)
            return True
        except InfraError:
            return False

    def db_restart(self, immediate):
        if immediate:
            # SIGQUIT is PostgreSQL's immediate shutdown: no checkpoint, crash recovery at the next start.
            # The restart policy (unless-stopped) brings the container back about a second after PostgreSQL
            # exits, often before a poll could see it stopped: a new start time says it exited as well.
            started = self.compose.inspect("postgres", "{{.State.StartedAt}}")
            self.compose.container_action("kill", "postgres", "--signal", "SIGQUIT")
            wait(lambda: self.compose.inspect("postgres", "{{.State.Running}} {{.State.StartedAt}}")
                 != f"true {started}", 60, "postgres to exit")
            if self.compose.inspect("postgres", "{{.State.Running}}") != "true":
                self.compose.container_action("start", "postgres")
        else:
            self.compose.container_action("restart", "postgres")
        self.compose.wait_ready("postgres")

    def ensure_up(self):
        for service in SERVICES:
            with contextlib.suppress(InfraError):
                self.compose.container_action("unpause", service)
        with contextlib.suppress(InfraError):
            self.compose.exec("rabbitmq", "rabbitmqctl", "start_app")
        self.compose("up", "-d")
        self.compose.forget_containers()

    def crashed(self):
        """Parts whose container restarted (restart policy) while no fault acted on it. Looked at every
        CRASH_CHECK_INTERVAL seconds: each look runs compose and inspect commands, which cost CPU."""
        if time.monotonic() < self._next_crash_check or not self.busy.acquire(blocking=False):
            return []
        self._next_crash_check = time.monotonic() + self.CRASH_CHECK_INTERVAL
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


def origin(url):
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname, parts.port


class BearerHandler(urllib.request.BaseHandler):
    """Gives every urllib request to `base_url` that carries no Authorization header `Authorization: Bearer
    <token()>`: the load and the checks send their requests with `harness.client.call` (urllib), unchanged."""

    def __init__(self, base_url, token):
        self.origin, self.token = origin(base_url), token

    def http_request(self, request):
        if origin(request.full_url) == self.origin and not request.has_header("Authorization"):
            request.add_unredirected_header("Authorization", f"Bearer {self.token()}")
        return request


def admin_token(compose):
    """A function returning a current `shop-admin` token from the project's published issuer."""
    issuer = IssuerClient(f"http://127.0.0.1:{compose.env.get('ISSUER_HOST_PORT', '8083')}",
                          compose.env.get("DEV_ISSUER_SECRET", ""))
    return lambda: issuer.token(admin=True)


@contextlib.contextmanager
def bearer_tokens(url, token):
    """Requests to the gateway at `url` carry `token()` while inside."""
    urllib.request.install_opener(urllib.request.build_opener(BearerHandler(url, token)))
    try:
        yield
    finally:
        urllib.request.install_opener(None)


def serving(url, token):
    """True once both services answer a request with `token()` through the gateway (see check_serving)."""
    try:
        check_serving(url, {"Authorization": f"Bearer {token()}"} if token else {})
        return True
    except (AssertionError, OSError):
        return False


@contextlib.contextmanager
def compose_system(config):
    """The compose project from empty volumes: (gateway url, order db, payment db, targets)."""
    compose = Compose(config.compose)
    # podman 4.3 runs no healthchecks by itself (systemd timers); compose waits for them, so run them here.
    pump = None
    if is_podman():
        from harness.compose import HealthcheckPump
        # Every 5 s, as the compose file's checks: a failing RabbitMQ check starts an Erlang VM each time, and
        # retried every second while the node restarts they would take the CPU the node needs to start.
        pump = HealthcheckPump(compose.project, interval=5.0)
        pump.start()
    try:
        compose("down", "-v")
        compose("build", timeout=1800)
        compose("up", "-d", timeout=600)
        compose.forget_containers()
        for service in compose.services:
            compose.wait_ready(service)
        targets = ComposeTargets(compose)
        url = config.gateway_url or f"http://localhost:{compose.env.get('GATEWAY_HOST_PORT', '8080')}"
        token = admin_token(compose) if compose.authenticated else None
        if token:
            token()  # fails at once, saying why, if the issuer refuses (e.g. another secret)
        # Healthy is alive; a service that came up before the issuer has no keys yet and refuses every token.
        wait(lambda: serving(url, token), 120, "both services serving through the gateway")
        try:
            with bearer_tokens(url, token) if token else contextlib.nullcontext():
                yield (url, Psql(compose, compose.env.get("ORDER_DB_NAME", "orders")),
                       Psql(compose, compose.env.get("PAYMENT_DB_NAME", "payments")), targets)
        finally:
            targets.ensure_up()
            # The next run's `down -v` removes the containers: what they logged stays here.
            logs = tempfile.mkdtemp(prefix=f"{compose.project}-logs-")
            compose.save_logs(logs)
            print(f"container logs: {logs}")
    finally:
        if pump is not None:
            pump.stop()
