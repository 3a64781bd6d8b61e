"""A bare machine: ./run.sh checks PostgreSQL and RabbitMQ before anything else and says exactly what to run,
and a service waiting for a server says which one, where, and why."""
import os
import subprocess
import sys
import threading
import time
from datetime import datetime

import pytest

from common.runtime.endpoints import amqp_hosts, describe_postgres, describe_rabbitmq, postgres_hosts
from harness.infra import INFRA
from harness.stack import free_port
from tests.deploy.manifests import ROOT

EX_UNAVAILABLE = 69


def dead_port():
    """A loopback port where nothing listens (free a moment ago; nothing here binds it meanwhile)."""
    return free_port()


def run_sh(env, *args):
    return subprocess.run([str(ROOT / "run.sh"), *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_run_sh_stops_at_once_with_the_commands_when_postgresql_is_missing_and_it_may_not_install():
    port = dead_port()
    done = run_sh({"ORDER_DB_DSN": f"postgresql://postgres:postgres@127.0.0.1:{port}/orders",
                   "PAYMENT_DB_DSN": f"postgresql://postgres:postgres@127.0.0.1:{port}/payments"}, "--no-install")
    assert done.returncode == EX_UNAVAILABLE, done
    assert (f"run.sh: PostgreSQL is not reachable at 127.0.0.1:{port} (ORDER_DB_DSN, PAYMENT_DB_DSN): "
            "connection refused") in done.stderr
    # The exact commands: a cluster of its own on that port (this machine has PostgreSQL installed), the
    # password the DSN uses; or compose.
    assert f"pg_createcluster --start -p {port} " in done.stderr
    assert f"""psql -q -p {port} -c "ALTER ROLE postgres LOGIN CREATEDB PASSWORD 'postgres'\"""" in done.stderr
    assert "docker compose up --build" in done.stderr
    assert "RabbitMQ" not in done.stderr, "the configured RabbitMQ answers"
    # Stopped before setting anything up or starting a service.
    assert "venv" not in done.stdout + done.stderr


def test_run_sh_names_the_broker_it_cannot_reach_and_does_not_offer_to_start_the_machines_own():
    port = dead_port()
    done = run_sh({"RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{port}/"}, "--no-install")
    assert done.returncode == EX_UNAVAILABLE, done
    assert f"run.sh: RabbitMQ is not reachable at 127.0.0.1:{port} (RABBITMQ_URL): connection refused" in done.stderr
    assert f"run a RabbitMQ node on port {port}" in done.stderr
    assert "service rabbitmq-server start" not in done.stderr, "that node is on 5672, not the configured port"


def test_run_sh_tells_a_port_held_by_another_server_from_a_missing_one():
    pg_port = INFRA.pg_port
    done = run_sh({"RABBITMQ_URL": f"amqp://guest:guest@127.0.0.1:{pg_port}/"}, "--no-install")
    assert done.returncode == EX_UNAVAILABLE, done
    assert f"RabbitMQ is not reachable at 127.0.0.1:{pg_port} (RABBITMQ_URL): something else listens there" \
        in done.stderr
    assert f"port {pg_port} is taken by something that is not RabbitMQ" in done.stderr


def logged_at(line):
    """Seconds of a text log line's `2026-12-01 20:53:05,616` timestamp."""
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


class Output(threading.Thread):
    """Collects a process's merged output, line by line, until it ends."""

    def __init__(self, popen):
        super().__init__(daemon=True)
        self.popen, self.lines = popen, []
        self.start()

    def run(self):
        for line in self.popen.stdout:
            self.lines.append(line)

    def wait_for(self, text, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not logged within {timeout} s:\n{''.join(self.lines)}")


@pytest.fixture
def start_service():
    started = []

    def start(module, env):
        popen = subprocess.Popen([sys.executable, "-m", module], cwd=ROOT, env={**os.environ, **env},
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started.append(popen)
        return Output(popen)
    yield start
    for popen in started:
        popen.terminate()
        popen.wait(30)


def test_a_service_waiting_for_postgresql_says_which_where_and_why_at_a_readable_pace(start_service):
    port = dead_port()
    output = start_service("order_svc", {"ORDER_DB_DSN": f"postgresql://postgres:postgres@127.0.0.1:{port}/orders",
                                         "ORDER_SVC_PORT": str(free_port()), "LOG_FORMAT": "text"})
    output.wait_for(f"waiting for PostgreSQL at 127.0.0.1:{port} (orders): connection refused")
    # Retries start 0.2 s apart; the log says so again only every 5 s, with how long it has been.
    output.wait_for(f"waiting for PostgreSQL at 127.0.0.1:{port} (orders): connection refused (", timeout=30)
    first, second = [logged_at(line) for line in output.lines if "waiting for" in line][:2]
    assert second - first >= 4.5, output.lines
    assert not any("Retrying" in line or "<unknown>" in line for line in output.lines), output.lines


def test_a_service_waiting_for_rabbitmq_says_which_and_where_without_the_credentials(start_service):
    port = dead_port()
    database = f"shop_test_waiting_{os.getpid()}"
    try:
        output = start_service("payment_svc", {"PAYMENT_DB_DSN": INFRA.dsn(database),
                                               "RABBITMQ_URL": f"amqp://guest:secret-word@127.0.0.1:{port}/",
                                               "PAYMENT_SVC_PORT": str(free_port()), "LOG_FORMAT": "text"})
        output.wait_for(f"waiting for RabbitMQ at 127.0.0.1:{port}: connection refused")
        assert not any("secret-word" in line for line in output.lines if "waiting for" in line)
    finally:
        INFRA.drop_database(database)


def test_addresses_are_read_from_every_form_of_dsn_and_url():
    assert postgres_hosts("postgresql://u:p@h1:5433,h2/orders?target_session_attrs=read-write") == (
        [("h1", 5433), ("h2", 5432)], "orders")
    assert postgres_hosts("host=a,b port=1,2 dbname=x user=y") == ([("a", 1), ("b", 2)], "x")
    assert postgres_hosts("postgresql://[::1]:5434/x") == ([("::1", 5434)], "x")
    assert amqp_hosts("amqp://guest:guest@n1:5673/,amqp://n2/?heartbeat=4") == [("n1", 5673), ("n2", 5672)]
    assert describe_postgres("postgresql://u:p@h1:1,h2:2/orders") == "PostgreSQL at h1:1, h2:2 (orders)"
    assert describe_rabbitmq("amqp://u:pw@n1:5672/") == "RabbitMQ at n1:5672"
