"""Start the gateway and the two services as real processes on a fresh pair of databases and a fresh
RabbitMQ vhost, so that runs never see each other's data. Which servers: `harness.infra`.

By default each service runs with least-privilege credentials, as deployed (`harness.credentials`): its own
PostgreSQL role owning its database and its own broker user, made with `ops.provision` for the run."""
import collections
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from harness.credentials import RunCredentials
from harness.infra import INFRA

ROOT = Path(__file__).resolve().parent.parent
# The servers chosen by the SHOP_TEST_* environment (harness.infra), under the names tests import.
PG_ADMIN_DSN = INFRA.pg_admin_dsn
AMQP_BASE = INFRA.amqp_base
rabbitmqctl = INFRA.rabbitmqctl
drop_database = INFRA.drop_database

COMMANDS = {
    "order": [sys.executable, "-m", "order_svc"],
    "payment": [sys.executable, "-m", "payment_svc"],
    "gateway": [sys.executable, "gateway.py"],
}


# The ports `free_port` handed out last: the kernel's pick of a free port can be one it picked a moment ago, which a
# process about to start has been told to take (seen: a gateway given the port of the stack's Order Service).
RECENT_PORTS = collections.deque(maxlen=1024)


def free_port():
    """A port nothing is bound to now, and none of the last ones this process handed out."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in RECENT_PORTS:
            RECENT_PORTS.append(port)
            return port


def cpu_seconds(pid):
    """CPU time (user + system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Process:
    """One process of the stack: `health_url` is its public port's `/health`, `admin_url` its admin port (where
    `/ready` and `/metrics` are)."""

    def __init__(self, name, command, env, log_path, health_url, admin_url=None):
        self.name, self.command, self.env = name, command, env
        self.log_path, self.health_url, self.admin_url = log_path, health_url, admin_url
        self.popen = None

    def start(self):
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def is_running(self):
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig):
        if self.is_running():
            self.popen.send_signal(sig)

    def kill(self):
        if self.popen is not None:
            self.signal(signal.SIGCONT)
            self.popen.kill()
            self.popen.wait()

    def stop(self, timeout=15):
        if self.is_running():
            self.popen.send_signal(signal.SIGCONT)
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait_healthy(self, timeout=60):
        for attempt in Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(0.1), reraise=True,
                                retry=retry_if_exception_type(OSError)):
            with attempt:
                if not self.is_running():
                    raise RuntimeError(f"{self.name} exited; see {self.log_path}:\n{self.log()[-3000:]}")
                with urllib.request.urlopen(self.health_url, timeout=2):
                    pass

    def wait_ready(self, timeout=60):
        """Wait until the process's `/ready` answers 200 (a service: database, broker and the issuer's keys)."""
        ready_url = self.admin_url + "/ready"
        for attempt in Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(0.1), reraise=True,
                                retry=retry_if_exception_type(OSError)):
            with attempt:
                with urllib.request.urlopen(ready_url, timeout=2):
                    pass

    def log(self):
        return Path(self.log_path).read_text(errors="replace")

    def cpu_seconds(self):
        """CPU time (user + system) the process has used so far; None if not running."""
        return cpu_seconds(self.popen.pid) if self.is_running() else None

    def peak_rss_mb(self):
        """The process's peak resident set size so far (the kernel's VmHWM), in MB; None if not running."""
        if not self.is_running():
            return None
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None


class Stack:
    """The three processes (optionally several replicas of each service), on their own databases and vhost.

    `commands` replaces the command of a kind ("order", "payment", "gateway"), e.g. a deliberately broken
    variant in a test; `heartbeat` sets the services' AMQP heartbeat (seconds). With `least_privilege` (the
    default) each service has its own role and broker user (`credentials`; `order_dsn` and `payment_dsn` are
    its role's, which owns the database), else both are the harness's administrators (superuser, guest).
    `RABBITMQ_URL` of `base_env` is the administrator's (the gateway's and tests' view); `operator_url` is
    the operator user's, whose dead-letter replays the services take."""

    def __init__(self, prefix="shop_test", replicas=1, extra_env=None, infra=INFRA, commands=None, heartbeat=None,
                 least_privilege=True):
        self.infra = infra
        self.commands = {**COMMANDS, **(commands or {})}
        run_id = f"{prefix}_{secrets.token_hex(4)}"
        self.run_id = run_id
        self.order_db, self.payment_db, self.vhost = f"{run_id}_orders", f"{run_id}_payments", run_id
        self.credentials = RunCredentials(run_id) if least_privilege else None
        self.extra_env = extra_env or {}
        self.log_dir = tempfile.mkdtemp(prefix=f"{run_id}_logs_")
        order_ports = [free_port() for _ in range(replicas)]
        payment_ports = [free_port() for _ in range(replicas)]
        self.admin_ports = {}  # process name: its admin port
        order_admin = [self._admin_port(f"order{i or ''}") for i in range(replicas)]
        payment_admin = [self._admin_port(f"payment{i or ''}") for i in range(replicas)]
        self.gateway_port = free_port()
        self.base_env = {
            **os.environ,
            "ORDER_DB_DSN": self._dsn("order", self.order_db),
            "PAYMENT_DB_DSN": self._dsn("payment", self.payment_db),
            "RABBITMQ_URL": infra.amqp_url(self.vhost, heartbeat),
            **(self.credentials.env() if self.credentials else {}),
            "GATEWAY_PORT": str(self.gateway_port),
            "PYTHONFAULTHANDLER": "1",  # a crash in C code (libcurl, libpq) leaves a traceback in the log
            "ORDER_SVC_URL": ",".join(f"http://127.0.0.1:{p}" for p in order_ports),
            "PAYMENT_SVC_URL": ",".join(f"http://127.0.0.1:{p}" for p in payment_ports),
            "ORDER_SVC_ADMIN_URL": ",".join(f"http://127.0.0.1:{p}" for p in order_admin),
            "PAYMENT_SVC_ADMIN_URL": ",".join(f"http://127.0.0.1:{p}" for p in payment_admin),
            # The open API unless `extra_env` turns authentication on (e.g. with `harness.issuer.DevIssuer.env()`):
            # most runs are about orders and money, not about who may send them.
            "AUTH_MODE": "off",
            **(extra_env or {}),
        }
        self.processes = {}
        for i, port in enumerate(order_ports):
            name = f"order{i or ''}"
            self._add(name, "order", {"ORDER_SVC_PORT": str(port), "ORDER_SVC_ADMIN_PORT": str(order_admin[i]),
                                      **self._broker_env("order", heartbeat)}, port)
        for i, port in enumerate(payment_ports):
            name = f"payment{i or ''}"
            self._add(name, "payment", {"PAYMENT_SVC_PORT": str(port), "PAYMENT_SVC_ADMIN_PORT": str(payment_admin[i]),
                                        **self._broker_env("payment", heartbeat)}, port)
        self._add("gateway", "gateway", {"GATEWAY_ADMIN_PORT": str(self._admin_port("gateway"))}, self.gateway_port)

    def _dsn(self, who, database):
        return self.credentials.dsn(self.infra, who, database) if self.credentials else self.infra.dsn(database)

    def _broker_env(self, who, heartbeat):
        """A service's own RABBITMQ_URL (with least privilege; `extra_env` may still replace it)."""
        if not self.credentials or "RABBITMQ_URL" in self.extra_env:
            return {}
        return {"RABBITMQ_URL": self.credentials.amqp_url(self.infra, who, self.vhost, heartbeat)}

    @property
    def operator_url(self):
        """The RabbitMQ URL of the operator user (`BROKER_OPERATOR_USER`), e.g. for `python -m ops.dead_letters`."""
        return self.credentials.amqp_url(self.infra, "operator", self.vhost) if self.credentials else \
            self.base_env["RABBITMQ_URL"]

    def _admin_port(self, name):
        self.admin_ports[name] = free_port()
        return self.admin_ports[name]

    def _add(self, name, kind, env, port):
        self.processes[name] = Process(name, self.commands[kind], {**self.base_env, **env},
                                       os.path.join(self.log_dir, f"{name}.log"),
                                       f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{self.admin_ports[name]}")

    def add_gateway(self, name, **env):
        """Start one more gateway (with `env` on top of the stack's) and return its URL; `close` stops it."""
        port = free_port()
        self._add(name, "gateway", {"GATEWAY_PORT": str(port), "GATEWAY_ADMIN_PORT": str(self._admin_port(name)),
                                    **env}, port)
        self.processes[name].start()
        self.processes[name].wait_healthy()
        return f"http://127.0.0.1:{port}"

    @property
    def url(self):
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def order_dsn(self):
        return self.base_env["ORDER_DB_DSN"]

    @property
    def payment_dsn(self):
        return self.base_env["PAYMENT_DB_DSN"]

    def __getitem__(self, name):
        return self.processes[name]

    def start(self, *names):
        if self.credentials:
            self.credentials.provision(self.infra, {"order": self.order_db, "payment": self.payment_db}, self.vhost)
        else:
            self.infra.add_vhost(self.vhost)
        for name in names or self.processes:
            self.processes[name].start()
        for name in names or self.processes:
            self.processes[name].wait_healthy()
        return self

    def restart(self, name):
        self.processes[name].start()
        self.processes[name].wait_healthy()

    def close(self):
        for process in self.processes.values():
            process.stop()
        try:
            for db in (self.order_db, self.payment_db):
                self.infra.drop_database(db)
            self.infra.rabbitmqctl("delete_vhost", self.vhost)
        finally:
            if self.credentials:  # also after a failed start: whatever was made of them
                self.credentials.drop(self.infra)

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            # `__exit__` does not run when `__enter__` fails: without this, the processes that did start
            # would outlive the run.
            self.close()
            raise

    def __exit__(self, *exc):
        self.close()
