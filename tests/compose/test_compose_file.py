"""docker-compose.yml, checked statically: what `docker-compose config` makes of it, and its use of .env."""
import os
import re
import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from common.config import read_env_file
from harness.compose import COMPOSE_FILE, ROOT, SERVICES

VARIABLE = re.compile(r"(?<!\$)\$\{(\w+)")  # ${VAR}, ${VAR:-x}; not the escaped $${VAR}


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


def test_compose_file_has_exactly_the_six_services(resolved):
    # The seed's five and the development token issuer (authentication is on: .env's AUTH_MODE is jwt).
    assert set(resolved["services"]) == set(SERVICES) == {"postgres", "rabbitmq", "order", "payment", "gateway",
                                                          "issuer"}


def test_only_the_gateway_is_published_on_8080_and_the_issuer_on_loopback_8083(resolved):
    # The contract's one exception: the issuer, where clients must reach it for their tokens. On loopback only:
    # its client secret is the well-known development one.
    published = {name: service.get("ports") for name, service in resolved["services"].items() if "ports" in service}
    assert published == {"gateway": [{"published": 8080, "target": 8080}], "issuer": ["127.0.0.1:8083:8083/tcp"]}


def test_every_service_has_a_healthcheck_and_restarts_unless_stopped(resolved):
    for name, service in resolved["services"].items():
        assert service["healthcheck"]["test"], name
        assert service["restart"] == "unless-stopped", name


def test_python_services_check_their_own_health_route(resolved):
    for name, port in (("order", "8081"), ("payment", "8082"), ("gateway", "8080")):
        assert resolved["services"][name]["healthcheck"]["test"][-1] == f"http://localhost:{port}/health"


def test_services_start_only_after_their_dependencies_are_healthy(resolved):
    # The issuer need only have started: the services fetch its keys until they have them (not ready till then).
    healthy, started = "service_healthy", "service_started"
    wanted = {"order": {"postgres": healthy, "rabbitmq": healthy, "issuer": started},
              "payment": {"postgres": healthy, "rabbitmq": healthy, "issuer": started},
              "gateway": {"order": healthy, "payment": healthy}}
    for name, dependencies in wanted.items():
        depends_on = resolved["services"][name]["depends_on"]
        assert {dependency: d["condition"] for dependency, d in depends_on.items()} == dependencies, name
    assert "depends_on" not in resolved["services"]["issuer"]


def test_data_lives_in_named_volumes(resolved):
    assert set(resolved["volumes"]) == {"pgdata", "rabbitmq-data", "issuer-keys"}
    mounts = {name: service["volumes"] for name, service in resolved["services"].items() if "volumes" in service}
    assert mounts == {"postgres": ["pgdata:/var/lib/postgresql/data:rw"],
                      "rabbitmq": ["rabbitmq-data:/var/lib/rabbitmq:rw"],
                      "issuer": ["issuer-keys:/var/lib/shop-issuer:rw"]}
    # The issuer's signing keys in that volume: its tokens outlive a restart of its container.
    assert resolved["services"]["issuer"]["environment"]["DEV_ISSUER_KEYS"] == "/var/lib/shop-issuer/keys.json"


def test_services_reach_each_other_by_service_name_not_localhost(resolved):
    env = resolved["services"]["gateway"]["environment"]
    assert env["ORDER_SVC_URL"] == "http://order:8081" and env["PAYMENT_SVC_URL"] == "http://payment:8082"
    for name in ("order", "payment"):
        env = resolved["services"][name]["environment"]
        assert "@postgres:5432/" in env["ORDER_DB_DSN"] and "@postgres:5432/" in env["PAYMENT_DB_DSN"]
        assert "@rabbitmq:5672/" in env["RABBITMQ_URL"]


def test_compose_file_holds_no_literal_credentials():
    text = COMPOSE_FILE.read_text()
    env = read_env_file()
    for key in ("POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "DEV_ISSUER_SECRET"):
        assert f"${{{key}}}" in text
    assert not re.search(r"://\w+:\w+@", text), "a DSN with literal credentials"
    assert f":{env['RABBITMQ_PASSWORD']}@" not in text and env["DEV_ISSUER_SECRET"] not in text


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
