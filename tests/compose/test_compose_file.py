"""docker-compose.yml, checked statically: what `docker-compose config` makes of it, and its use of .env."""
import os
import re
import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

import common.runtime.config
from common.runtime.config import ENV_FILE, read_env_file
from harness.compose import COMPOSE_FILE, ONE_SHOTS, ROOT, SERVICES

VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)")  # ${VAR}, ${VAR:-x}; not the escaped $${VAR}
PYTHON_PROCESSES = ("order", "payment", "gateway")
COMPOSE_BLOCK = "# --- docker compose only"
# Each service's own credentials (.env's compose block): PostgreSQL role and password, broker user and password.
OWN = {"order": ("ORDER_DB_USER", "ORDER_DB_PASSWORD", "ORDER_BROKER_USER", "ORDER_BROKER_PASSWORD"),
       "payment": ("PAYMENT_DB_USER", "PAYMENT_DB_PASSWORD", "PAYMENT_BROKER_USER", "PAYMENT_BROKER_PASSWORD")}
DSN_SETTING = {"order": "ORDER_DB_DSN", "payment": "PAYMENT_DB_DSN"}
ADMIN_VARIABLES = ("POSTGRES_USER", "POSTGRES_PASSWORD", "RABBITMQ_USER", "RABBITMQ_PASSWORD", "PG_ADMIN_DSN")


def native_keys():
    """The keys of .env's native part (above the compose block): what the processes read."""
    text = ENV_FILE.read_text().split(COMPOSE_BLOCK)[0]
    return {line.partition("=")[0].strip() for line in text.splitlines()
            if "=" in line and not line.lstrip().startswith("#")}


def logins(environment):
    """{(user, password)} of every URL in `environment`'s values (DSNs, broker URLs)."""
    found = set()
    for value in environment.values():
        for url in str(value or "").split(","):
            parts = urlsplit(url.strip())
            if parts.scheme and (parts.username or parts.password):
                found.add((parts.username, parts.password))
    return found


@pytest.fixture(scope="module")
def resolved(podman_machine):
    """The compose file as docker-compose resolves it with .env alone (no overriding shell variables)."""
    env = {k: v for k, v in os.environ.items() if k not in read_env_file()}
    done = subprocess.run(["docker-compose", "--file", COMPOSE_FILE, "config"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return yaml.safe_load(done.stdout)


def test_every_variable_the_compose_file_names_is_defined_in_env_file():
    named = set(VARIABLE.findall(COMPOSE_FILE.read_text()))
    assert named
    assert named - set(read_env_file()) == set()


def test_compose_file_has_exactly_the_six_services_and_the_two_provisioning_one_shots(resolved):
    # The seed's five and the development token issuer (authentication is on: .env's AUTH_MODE is jwt); before
    # them, each service's own credentials from python -m ops.provision.
    assert set(SERVICES) == {"postgres", "rabbitmq", "order", "payment", "gateway", "issuer"}
    assert set(ONE_SHOTS) == {"provision-postgres", "provision-rabbitmq"}
    assert set(resolved["services"]) == set(SERVICES) | set(ONE_SHOTS)


def test_only_the_gateway_is_published_on_8080_and_the_issuer_on_loopback_8083(resolved):
    # The contract's one exception: the issuer, where clients must reach it for their tokens. On loopback only:
    # its client secret is the well-known development one.
    published = {name: service.get("ports") for name, service in resolved["services"].items() if "ports" in service}
    assert published == {"gateway": [{"published": 8080, "target": 8080}], "issuer": ["127.0.0.1:8083:8083/tcp"]}


def test_every_service_has_a_healthcheck_and_restarts_unless_stopped(resolved):
    for name in SERVICES:
        service = resolved["services"][name]
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped", name
    # The one-shots run to completion once per `up`: never restarted, nothing to check the health of.
    for name in ONE_SHOTS:
        assert resolved["services"][name]["restart"] == "no" and "healthcheck" not in resolved["services"][name]


def test_python_services_check_their_own_health_route(resolved):
    for name, port in (("order", "8081"), ("payment", "8082"), ("gateway", "8080")):
        assert resolved["services"][name]["healthcheck"]["test"][-1] == f"http://localhost:{port}/health"


def test_services_start_only_after_their_dependencies_are_healthy_and_provisioned(resolved):
    # The issuer need only have started: the services fetch its keys until they have them (not ready till then).
    # The broker imports its users at boot, so it starts once they are written; the services once their roles
    # and databases exist.
    healthy, started, done = "service_healthy", "service_started", "service_completed_successfully"
    wanted = {"order": {"postgres": healthy, "provision-postgres": done, "rabbitmq": healthy, "issuer": started},
              "payment": {"postgres": healthy, "provision-postgres": done, "rabbitmq": healthy, "issuer": started},
              "gateway": {"order": healthy, "payment": healthy},
              "provision-postgres": {"postgres": healthy},
              "rabbitmq": {"provision-rabbitmq": done}}
    for name, dependencies in wanted.items():
        depends_on = resolved["services"][name]["depends_on"]
        assert {dependency: d["condition"] for dependency, d in depends_on.items()} == dependencies, name
    for name in ("issuer", "postgres", "provision-rabbitmq"):
        assert "depends_on" not in resolved["services"][name], name


def test_data_lives_in_named_volumes(resolved):
    assert set(resolved["volumes"]) == {"pgdata", "rabbitmq-data", "rabbitmq-definitions", "issuer-keys"}
    mounts = {name: service["volumes"] for name, service in resolved["services"].items() if "volumes" in service}
    # The one-shots run ops/ from the app image (nothing of the checkout is mounted); the broker's definitions go
    # through a volume of their own, read-only for the broker.
    assert mounts == {"postgres": ["pgdata:/var/lib/postgresql/data:rw"],
                      "rabbitmq": ["rabbitmq-data:/var/lib/rabbitmq:rw",
                                   "rabbitmq-definitions:/etc/rabbitmq/definitions:ro"],
                      "issuer": ["issuer-keys:/var/lib/shop-issuer:rw"],
                      "provision-rabbitmq": ["rabbitmq-definitions:/definitions:rw"]}
    # The issuer's signing keys in that volume: its tokens outlive a restart of its container.
    assert resolved["services"]["issuer"]["environment"]["DEV_ISSUER_KEYS"] == "/var/lib/shop-issuer/keys.json"


def test_services_reach_each_other_by_service_name_not_localhost(resolved):
    env = resolved["services"]["gateway"]["environment"]
    assert env["ORDER_SVC_URL"] == "http://order:8081" and env["PAYMENT_SVC_URL"] == "http://payment:8082"
    for name in PYTHON_PROCESSES:
        env = resolved["services"][name]["environment"]
        for key, host in (("ORDER_DB_DSN", "postgres:5432"), ("PAYMENT_DB_DSN", "postgres:5432"),
                          ("RABBITMQ_URL", "rabbitmq:5672")):
            assert urlsplit(env[key]).netloc.rpartition("@")[2] == host, (name, key)


def test_compose_file_holds_no_literal_credentials():
    text = COMPOSE_FILE.read_text()
    env = read_env_file()
    passwords = ("POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "ORDER_DB_PASSWORD", "PAYMENT_DB_PASSWORD",
                 "ORDER_BROKER_PASSWORD", "PAYMENT_BROKER_PASSWORD", "OPERATOR_BROKER_PASSWORD")
    for key in (*passwords, "DEV_ISSUER_SECRET"):
        assert f"${{{key}}}" in text
    assert not re.search(r"://[\w-]+:[\w-]+@", text), "a DSN with literal credentials"
    for key in passwords:
        assert f":{env[key]}@" not in text, key
    assert env["DEV_ISSUER_SECRET"] not in text


def test_each_service_logs_in_with_its_own_role_and_broker_user_and_nothing_else(resolved):
    env = read_env_file()
    for name, (db_user, db_password, broker_user, broker_password) in OWN.items():
        service = resolved["services"][name]
        environment = service["environment"]
        own_dsn = urlsplit(environment[DSN_SETTING[name]])
        assert (own_dsn.username, own_dsn.password) == (env[db_user], env[db_password]), name
        broker = urlsplit(environment["RABBITMQ_URL"])
        assert (broker.username, broker.password) == (env[broker_user], env[broker_password]), name
        # Its own two logins and no other: the other service's DSN is there without credentials (load_settings
        # needs it set; the service never connects to it).
        assert logins(environment) == {(env[db_user], env[db_password]), (env[broker_user], env[broker_password])}
        assert "env_file" not in service, name
    # The names the Kubernetes manifests give them (docs/security-credentials.md).
    assert (env["ORDER_DB_USER"], env["PAYMENT_DB_USER"]) == ("shop-order", "shop-payment")
    assert (env["ORDER_BROKER_USER"], env["PAYMENT_BROKER_USER"]) == ("shop-order", "shop-payment")
    assert env["OPERATOR_BROKER_USER"] == "shop-operator"
    # Distinct passwords, so that each one found in a container's environment says whose it is.
    passwords = [env[key] for key in env if key.endswith("_PASSWORD")]
    assert len(set(passwords)) == len(passwords)


def test_no_administrator_credential_and_no_env_file_reaches_a_service(resolved):
    env = read_env_file()
    admin_passwords = {env["POSTGRES_PASSWORD"], env["RABBITMQ_PASSWORD"]}
    for name in (*PYTHON_PROCESSES, "issuer"):
        service = resolved["services"][name]
        # env_file would hand the container the whole .env, the administrators' passwords with it.
        assert "env_file" not in service, name
        environment = service["environment"]
        assert not set(ADMIN_VARIABLES) & set(environment), name
        assert not {password for _, password in logins(environment)} & admin_passwords, name
        assert not {user for user, _ in logins(environment)} & {env["POSTGRES_USER"], env["RABBITMQ_USER"]}, name
        assert not admin_passwords & {str(value) for value in environment.values()}, name
    assert logins(resolved["services"]["gateway"]["environment"]) == set(), "the gateway connects to neither"


def test_consumers_take_messages_from_each_other_s_broker_user_and_the_operator(resolved, monkeypatch):
    # common/runtime/config.py: with these empty, each service would expect its own URL's user and refuse the other's
    # messages. Every Python process gets the same three names: the users the services and the operator log in as.
    env = read_env_file()
    monkeypatch.setattr(common.runtime.config, "read_env_file", lambda *a, **k: {})  # the image has no .env
    services = resolved["services"]
    order_user = common.runtime.config.broker_user(services["order"]["environment"]["RABBITMQ_URL"])
    payment_user = common.runtime.config.broker_user(services["payment"]["environment"]["RABBITMQ_URL"])
    operator_user = urlsplit(services["provision-rabbitmq"]["environment"]["OPERATOR_RABBITMQ_URL"]).username
    assert (order_user, payment_user, operator_user) == (env["ORDER_BROKER_USER"], env["PAYMENT_BROKER_USER"],
                                                         env["OPERATOR_BROKER_USER"])
    for name in PYTHON_PROCESSES:
        settings = common.runtime.config.load_settings(services[name]["environment"])
        assert (settings.order_svc_broker_user, settings.payment_svc_broker_user, settings.broker_operator_user) \
            == (order_user, payment_user, operator_user), name


def test_every_knob_of_env_reaches_every_python_process_and_its_settings_load(resolved, monkeypatch):
    # Without env_file each process gets what is listed: every knob of .env's native part, none forgotten.
    monkeypatch.setattr(common.runtime.config, "read_env_file", lambda *a, **k: {})
    keys = native_keys()
    assert {"GATEWAY_PORT", "ORDER_DB_DSN", "RABBITMQ_URL", "QUEUE_TYPE", "OTEL_TRACES_EXPORTER"} <= keys
    for name in PYTHON_PROCESSES:
        environment = resolved["services"][name]["environment"]
        missing = keys - set(environment)
        assert not missing, f"{name}: add {sorted(missing)} to x-python-environment in docker-compose.yml"
        common.runtime.config.load_settings(environment)


def test_provisioning_runs_ops_provision_with_the_credentials_the_services_use(resolved):
    env = read_env_file()
    services = resolved["services"]
    postgres = services["provision-postgres"]
    assert postgres["command"] == ["python", "-m", "ops.provision", "--only", "postgres"]
    assert postgres["image"] == services["order"]["image"], "the app image"
    admin = urlsplit(postgres["environment"]["PG_ADMIN_DSN"])
    assert (admin.username, admin.password, admin.hostname) == (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"],
                                                                "postgres")
    for name, setting in DSN_SETTING.items():
        assert postgres["environment"][setting] == services[name]["environment"][setting], name

    broker = services["provision-rabbitmq"]
    script = broker["command"][-1]
    assert broker["command"][:2] == ["sh", "-ec"]
    assert "python -m ops.provision --only rabbitmq --definitions /definitions/shop.json" in script
    for name, key in (("order", "ORDER_RABBITMQ_URL"), ("payment", "PAYMENT_RABBITMQ_URL")):
        given, used = urlsplit(broker["environment"][key]), urlsplit(services[name]["environment"]["RABBITMQ_URL"])
        assert (given.username, given.password, given.netloc, given.path) == (used.username, used.password,
                                                                              used.netloc, used.path), name
    # The files stay readable by their owner only (they hold the passwords): handed to the broker's user.
    assert "chown 999:999 /definitions/admin.json /definitions/shop.json" in script
    # The broker imports every file of that volume at boot.
    assert services["rabbitmq"]["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] == \
        '-rabbit load_definitions "/etc/rabbitmq/definitions"'
    assert "RABBITMQ_DEFAULT_USER" not in services["rabbitmq"].get("environment", {}), "ignored with definitions"


def test_services_verify_tokens_of_the_published_issuer_with_its_keys_fetched_by_name(resolved):
    env = read_env_file()
    issuer = resolved["services"]["issuer"]
    # Tokens name the URL clients see (the published port) as iss; the containers fetch the keys by service name.
    assert issuer["environment"]["AUTH_ISSUER"] == "http://localhost:8083"
    assert issuer["environment"]["DEV_ISSUER_LISTEN_ADDRESS"] == "0.0.0.0"
    for name in ("order", "payment", "gateway"):
        service_env = resolved["services"][name]["environment"]
        assert service_env["AUTH_MODE"] == "jwt", name
        assert service_env["AUTH_ISSUER"] == issuer["environment"]["AUTH_ISSUER"], name
        assert service_env["AUTH_JWKS_URL"] == "http://issuer:8083/jwks", name
        for key in ("AUTH_AUDIENCE", "AUTH_USER_CLAIM"):
            assert service_env[key] == issuer["environment"][key] == env[key], (name, key)


def test_the_issuer_checks_its_own_key_set(resolved):
    test = resolved["services"]["issuer"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "node", "-e"] and "http://127.0.0.1:8083/jwks" in test[3]


def test_services_set_an_amqp_heartbeat_so_a_frozen_container_is_noticed_in_seconds(resolved):
    for name in ("order", "payment", "gateway"):
        query = parse_qs(urlsplit(resolved["services"][name]["environment"]["RABBITMQ_URL"]).query)
        assert 0 < int(query["heartbeat"][0]) <= 10, name
