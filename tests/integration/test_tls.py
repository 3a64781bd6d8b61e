"""TLS for real: the Order and Payments services (in-process) against a private PostgreSQL cluster with `ssl = on`
and a private RabbitMQ node with a TLS listener (`harness.tls`, certificates from a CA this module makes), with
`sslmode=verify-full` DSNs and `amqps://...?cafile=` URLs; a wrong CA, a certificate for another name and a server
without TLS are refused at once, saying why; `scripts/preflight.py` checks the same.

The servers are made for this module and removed after it (the cluster dropped, the node stopped, its files
deleted): about 9 s of the module's run. Only loopback addresses: 127.0.0.1 and `localhost` are in the server
certificates, 127.0.0.2 (where both servers listen too) is not."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal

import pytest
from psycopg2.extensions import parse_dsn

from common.broker.amqp_nodes import split_urls
from common.db.pg_hosts import single_host_dsns
from common.runtime.config import ConfigurationError, load_settings
from harness.stack import ROOT, free_port
from harness.tls import UNNAMED_ADDRESS, TlsServers
from order_svc.bootstrap import OrderService
from payment_svc.bootstrap import PaymentService
from tests.conftest import eventually
from tests.integration.conftest import running, stopped
from tests.integration.http import request

VHOST = "shop_tls"
EX_UNAVAILABLE = 69
# A refusal must come at once: the first attempt's own time, never the start-up retries' (which wait for ever).
REFUSAL_SECONDS = 10

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes a PostgreSQL cluster and a RabbitMQ node: root")


@pytest.fixture(scope="module")
def tls():
    directory = tempfile.mkdtemp(prefix="shop_tls_")
    try:
        with TlsServers(directory) as servers:
            servers.rabbit.infra.add_vhost(VHOST)
            yield servers
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class PlaintextPostgres:
    """A stand-in for a PostgreSQL with `ssl = off`: it answers every SSLRequest with 'N' (all a client that
    requires TLS reads before giving up) and closes."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(8)
                    conn.sendall(b"N")
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def plaintext_postgres():
    server = PlaintextPostgres()
    yield server
    server.close()


def env_for(tls, **overrides):
    """The services' environment: verify-full DSNs (host `localhost`) and an amqps:// URL, all with the test CA."""
    return {
        "ORDER_DB_DSN": tls.postgres.dsn("tls_orders"),
        "PAYMENT_DB_DSN": tls.postgres.dsn("tls_payments"),
        "RABBITMQ_URL": tls.rabbit.url(VHOST),
        "LOG_LEVEL": "WARNING",
        "AUTH_MODE": "off",
        "ORDER_SVC_ADMIN_PORT": "0",
        "PAYMENT_SVC_ADMIN_PORT": "0",
        **overrides,
    }


def settings_for(env):
    return load_settings({**env, "ORDER_SVC_PORT": str(free_port()), "PAYMENT_SVC_PORT": str(free_port())})


@pytest.fixture
def services(io_loop, tls):
    settings = settings_for(env_for(tls))
    started = [running(io_loop, OrderService(settings)), running(io_loop, PaymentService(settings))]
    yield started
    for service in started:
        stopped(io_loop, service)


async def tls_of_session(service):
    """(ssl, TLS version) of a database connection of `service`, as the server sees it."""
    async def ask(cur):
        await cur.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        return await cur.fetchone()
    return await service.db.run(ask, transaction=False)


@pytest.mark.gen_test(timeout=60)
async def test_an_order_reaches_finished_over_verified_tls_to_postgresql_and_rabbitmq(tls, services):
    order_service, payment_service = services
    for service in services:
        ssl, version = await tls_of_session(service)
        assert ssl and version.startswith("TLSv1."), (service.name, ssl, version)
    # Every AMQP connection the node has is a TLS one (only these services use this node).
    connections = tls.rabbit.infra.rabbitmqctl("list_connections", "ssl", "ssl_protocol").split("\n")
    flags = [line.split("\t")[0] for line in connections if line.strip() and not line.startswith("ssl")]
    assert len(flags) >= 4 and set(flags) == {"true"}, connections

    user_id = 4242
    assert (await request(payment_service.port, "POST", "/payments", {"user_id": user_id}))[0] == 201
    code, body = await request(payment_service.port, "PUT", f"/payments/{user_id}", {"amount": 100})
    assert (code, body["account"]["balance"]) == (200, Decimal(100))
    code, body = await request(order_service.port, "POST", "/orders",
                               {"user_id": user_id, "amount": 30, "description": "over TLS"})
    assert code == 201, body
    order_id = body["order_id"]

    async def finished():
        _, got = await request(order_service.port, "GET", f"/orders/{order_id}")
        assert got["order"]["status"] == "FINISHED"
    await eventually(finished, timeout=20)
    _, body = await request(payment_service.port, "GET", f"/payments/{user_id}")
    assert body["account"]["balance"] == Decimal(70)


def refusals(tls, plaintext_postgres):
    """{case: (environment overrides, what the error must say)}."""
    wrong_pg = tls.postgres.dsn("tls_orders", rootcert=tls.wrong_ca.cert)
    dead = free_port()
    return {
        "postgres wrong CA": ({"ORDER_DB_DSN": wrong_pg, "PAYMENT_DB_DSN": wrong_pg},
                              f"PostgreSQL at localhost:{tls.postgres.port} (tls_orders): TLS failed: SSL error: "
                              "certificate verify failed"),
        "postgres other host name": (
            {key: tls.postgres.dsn("tls_orders", host=UNNAMED_ADDRESS) for key in ("ORDER_DB_DSN", "PAYMENT_DB_DSN")},
            f'does not match host name "{UNNAMED_ADDRESS}"'),
        "postgres without TLS": (
            {key: tls.postgres.dsn("x", host="127.0.0.1", port=plaintext_postgres.port)
             for key in ("ORDER_DB_DSN", "PAYMENT_DB_DSN")},
            "server does not support SSL, but SSL was required"),
        "postgres two hosts, one down, the other wrong CA": (
            {key: f"postgresql://postgres:{tls.postgres.password}@127.0.0.1:{dead},localhost:{tls.postgres.port}/x"
                  f"?sslmode=verify-full&sslrootcert={tls.wrong_ca.cert}&target_session_attrs=read-write"
             for key in ("ORDER_DB_DSN", "PAYMENT_DB_DSN")},
            f"localhost:{tls.postgres.port}: SSL error: certificate verify failed"),
        "rabbitmq wrong CA": ({"RABBITMQ_URL": tls.rabbit.url(VHOST, cafile=tls.wrong_ca.cert)},
                              f"RabbitMQ: TLS failed: localhost:{tls.rabbit.tls_port}: certificate verify failed: "
                              "self-signed certificate in certificate chain"),
        "rabbitmq other host name": ({"RABBITMQ_URL": tls.rabbit.url(VHOST, host=UNNAMED_ADDRESS)},
                                     f"certificate is not valid for '{UNNAMED_ADDRESS}'"),
        "rabbitmq without TLS": ({"RABBITMQ_URL": tls.rabbit.url(VHOST, port=tls.rabbit.tcp_port)},
                                 "wrong version number"),
    }


@pytest.mark.parametrize("service_class, case", [
    (OrderService, "postgres wrong CA"), (PaymentService, "postgres wrong CA"),
    (OrderService, "rabbitmq wrong CA"), (PaymentService, "rabbitmq wrong CA"),
    (OrderService, "postgres other host name"), (PaymentService, "rabbitmq other host name"),
    (OrderService, "postgres without TLS"), (PaymentService, "rabbitmq without TLS"),
    (PaymentService, "postgres two hosts, one down, the other wrong CA"),
], ids=lambda value: value if isinstance(value, str) else value.name)
def test_a_service_refuses_to_start_at_once_and_says_why(io_loop, tls, plaintext_postgres, service_class, case):
    overrides, says = refusals(tls, plaintext_postgres)[case]
    service = service_class(settings_for(env_for(tls, **overrides)))
    started = time.monotonic()
    try:
        with pytest.raises(ConfigurationError) as refused:
            io_loop.run_sync(service.start, timeout=REFUSAL_SECONDS + 20)
    finally:
        if service.db is not None:  # the database was fine, the broker was not
            io_loop.run_sync(service.db.close, timeout=30)
    assert time.monotonic() - started < REFUSAL_SECONDS
    assert says in str(refused.value)
    assert "not retrying" in str(refused.value)


def test_the_process_exits_with_the_reason(tls):
    """`python -m order_svc` itself: exit status 2 and the reason in its log, not a wait for ever."""
    env = {**os.environ, **env_for(tls, ORDER_DB_DSN=tls.postgres.dsn("tls_orders", rootcert=tls.wrong_ca.cert)),
           "ORDER_SVC_PORT": str(free_port()), "LOG_LEVEL": "INFO"}
    done = subprocess.run([sys.executable, "-m", "order_svc"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "not starting: PostgreSQL at localhost" in done.stderr
    assert "TLS failed: SSL error: certificate verify failed" in done.stderr


@pytest.mark.gen_test(timeout=60)
async def test_multi_host_dsn_and_node_list_with_verify_full_and_one_host_down(tls):
    dead_pg, dead_amqp = free_port(), free_port()
    password, ca = tls.postgres.password, tls.ca.cert
    dsn = (f"postgresql://postgres:{password}@127.0.0.1:{dead_pg},localhost:{tls.postgres.port}/tls_multi"
           f"?sslmode=verify-full&sslrootcert={ca}&target_session_attrs=read-write")
    # Each host keeps the TLS parameters: verified as itself, with the same CA.
    for host_dsn in single_host_dsns(dsn):
        assert {k: parse_dsn(host_dsn)[k] for k in ("sslmode", "sslrootcert")} == {"sslmode": "verify-full",
                                                                                   "sslrootcert": str(ca)}
    urls = f"{tls.rabbit.url(VHOST, host='127.0.0.1', port=dead_amqp)},{tls.rabbit.url(VHOST)}"
    settings = settings_for(env_for(tls, ORDER_DB_DSN=dsn, RABBITMQ_URL=urls))
    service = OrderService(settings)
    await service.start()
    try:
        assert service.db.hosts.several and parse_dsn(service.db.dsn)["host"] == "localhost"
        assert (await tls_of_session(service))[0] is True
        assert all(connection.node.port == tls.rabbit.tls_port for connection in service.broker.connections)
        code, body = await request(service.port, "POST", "/orders", {"user_id": 7, "amount": 1})
        assert code == 201, body
    finally:
        await service.stop()


def preflight(tls, **overrides):
    env = {**os.environ, **{k: v for k, v in env_for(tls).items() if k.endswith(("_DSN", "_URL"))}, **overrides}
    return subprocess.run(["python3", "scripts/preflight.py", "--no-install"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_preflight_accepts_the_tls_servers(tls):
    multi = (f"host=127.0.0.1,localhost port={tls.postgres.port} dbname=payments sslmode=verify-full "
             f"sslrootcert={tls.ca.cert}")
    done = preflight(tls, PAYMENT_DB_DSN=multi)
    assert done.returncode == 0, done.stderr
    done = preflight(tls)  # the URL forms as the services use them
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("case", ["postgres wrong CA", "rabbitmq wrong CA", "postgres other host name",
                                  "postgres without TLS", "rabbitmq without TLS"])
def test_preflight_names_a_wrong_ca_or_a_server_without_tls(tls, plaintext_postgres, case):
    pg_wrong = tls.postgres.dsn("orders", rootcert=tls.wrong_ca.cert)
    cases = {
        "postgres wrong CA": ({"ORDER_DB_DSN": pg_wrong},
                              f"PostgreSQL answers at localhost:{tls.postgres.port} (ORDER_DB_DSN), but TLS fails: "
                              "certificate verify failed: unable to get local issuer certificate "
                              f"(sslmode=verify-full, sslrootcert={tls.wrong_ca.cert})"),
        "rabbitmq wrong CA": ({"RABBITMQ_URL": tls.rabbit.url(VHOST, cafile=tls.wrong_ca.cert)},
                              f"RabbitMQ answers at localhost:{tls.rabbit.tls_port} (RABBITMQ_URL), but TLS fails: "
                              "certificate verify failed: self-signed certificate in certificate chain"),
        "postgres other host name": ({"PAYMENT_DB_DSN": tls.postgres.dsn("payments", host=UNNAMED_ADDRESS)},
                                     f"certificate is not valid for '{UNNAMED_ADDRESS}'"),
        "postgres without TLS": (
            {"PAYMENT_DB_DSN": tls.postgres.dsn("payments", host="127.0.0.1", port=plaintext_postgres.port)},
            f"PostgreSQL answers at 127.0.0.1:{plaintext_postgres.port} (PAYMENT_DB_DSN), but TLS fails: the server "
            "does not offer TLS (ssl = off), but sslmode=verify-full requires it"),
        "rabbitmq without TLS": ({"RABBITMQ_URL": tls.rabbit.url(VHOST, port=tls.rabbit.tcp_port)},
                                 "TLS handshake failed (wrong version number): the port does not speak TLS"),
    }
    overrides, says = cases[case]
    done = preflight(tls, **overrides)
    assert done.returncode == EX_UNAVAILABLE, done
    assert says in done.stderr
    assert "Correct the CA or TLS settings in" in done.stderr
    assert "apt-get" not in done.stderr and "pg_createcluster" not in done.stderr  # nothing to install


def test_amqp_tls_parameters_that_would_be_ignored_or_fail_are_refused(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_text("")
    assert split_urls(f"amqps://u:p@h/v?cafile={ca}") == [f"amqps://u:p@h/v?cafile={ca}"]
    with pytest.raises(ConfigurationError, match="has TLS parameters \\(cafile\\) but is amqp://"):
        split_urls(f"amqp://u:p@h/v?cafile={ca}")
    with pytest.raises(ConfigurationError, match="aiormq does not read ca_certs"):
        split_urls(f"amqps://u:p@h/v?ca_certs={ca}")
    with pytest.raises(ConfigurationError, match="cafile /nonexistent/ca.crt cannot be read") as refused:
        split_urls("amqps://u:secret@h/v?cafile=/nonexistent/ca.crt")
    assert "secret" not in str(refused.value)
