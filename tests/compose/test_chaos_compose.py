"""The chaos runner against containers (`python -m harness.chaos --compose`), for real: docker-compose.yml under
podman on empty volumes, orders and top-ups through the published gateway (with an admin token from the published
issuer: authentication is on), every fault kind of compose mode on the containers (kill/start, pause/unpause,
RabbitMQ stop_app and stop/start, PostgreSQL restart and SIGQUIT crash), then every check of the runner.

It takes about 2.5 minutes on a quiet machine of this project's kind (10-15 on one shared with other test runs,
docs/testing.md "Chaos runs", compose mode): it runs with SHOP_COMPOSE_CHAOS=1, as CI sets it;
SHOP_COMPOSE_CHAOS_ORDERS / _FAULTS / _SEED choose the run (default: 150 orders and one fault of each kind)."""
import os
import secrets
import subprocess
import sys

import pytest

from harness.chaos.faults import KINDS
from harness.compose import ROOT, SOCKET
from harness.stack import free_port

ORDERS = int(os.environ.get("SHOP_COMPOSE_CHAOS_ORDERS", "150"))
FAULTS = int(os.environ.get("SHOP_COMPOSE_CHAOS_FAULTS", str(len(KINDS))))
SEED = int(os.environ.get("SHOP_COMPOSE_CHAOS_SEED", "3"))


pytestmark = pytest.mark.skipif(os.environ.get("SHOP_COMPOSE_CHAOS") != "1",
                                reason="2.5-15 minutes: set SHOP_COMPOSE_CHAOS=1, as CI does (docs/testing.md)")


@pytest.fixture
def compose_project(podman_machine):
    """A compose project of its own (name, gateway and issuer ports); removed with its volumes afterwards."""
    project, port = f"shopchaos{secrets.token_hex(4)}", free_port()
    env = {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}", "COMPOSE_PROJECT_NAME": project,
           "GATEWAY_HOST_PORT": str(port), "ISSUER_HOST_PORT": str(free_port())}
    yield env, port
    subprocess.run(["docker-compose", "--project-name", project, "--project-directory", ROOT, "down", "--volumes",
                    "--timeout", "10"], cwd=ROOT, env=env, capture_output=True, timeout=300)


def test_chaos_runner_in_compose_mode_keeps_every_invariant_with_every_fault_on_the_containers(compose_project):
    env, port = compose_project
    command = [sys.executable, "-m", "harness.chaos", "--compose", str(ROOT), "--orders", str(ORDERS),
               "--faults", str(FAULTS), "--seed", str(SEED), "--gateway-url", f"http://127.0.0.1:{port}"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    print(done.stdout[-20000:], done.stderr[-5000:])
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    assert "ALL INVARIANTS HOLD" in done.stdout
    # Each kind was applied to the containers, and the runner checked what it promises.
    faults_line = next(line for line in done.stdout.splitlines() if line.startswith("faults by kind"))
    assert all(f"'{kind}'" in faults_line for kind in KINDS), faults_line
    for check in ("every order final", "money conserved", "every kind of fault injected", "recovered within",
                  "API shows the databases"):
        assert check in done.stdout, check
