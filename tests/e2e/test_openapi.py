"""openapi.yaml and the running system agree: the gateway serves the document, documents every route it has and
who may call it, and schemathesis finds no 5xx and no response that breaks the document, with authentication on
(the development issuer, panva's oidc-provider): with an admin's token every valid request is accepted, and with a
plain user's token every refusal is a documented one."""
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from common.runtime.config import load_settings
from gateway import OPENAPI_SPEC, make_app, own_routes

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
SCHEMATHESIS_CONFIG = Path(__file__).with_name("schemathesis.toml")
# A fixed seed keeps CI reproducible; explore others with SHOP_SCHEMATHESIS_SEED=N ./test.sh tests/e2e/test_openapi.py
SEED = int(os.environ.get("SHOP_SCHEMATHESIS_SEED", "1"))
EXAMPLES_PER_ROUTE = 20
PUBLIC_ROUTES = ("/health", "/openapi.yaml")
# A user's token, without shop:topup: the documented examples (user_id 1) meet its own account and its top-up refusal.
PLAIN_USER = 1


@pytest.fixture(scope="module")
def spec():
    return yaml.safe_load(OPENAPI_SPEC.read_text())


@pytest.fixture(scope="module")
def stack(authenticated_stack, issuer):
    """The stack with authentication on, and order 1 another user's than `PLAIN_USER`: the documented example
    order id is one that user may not see."""
    request = urllib.request.Request(
        authenticated_stack.url + "/orders", method="POST",
        data=json.dumps({"user_id": PLAIN_USER + 1, "amount": 1}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {issuer.token(admin=True)}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.load(response)["order_id"] == 1
    return authenticated_stack


def schemathesis(url, token, tmp_path, *options, examples=EXAMPLES_PER_ROUTE):
    """Run schemathesis against the gateway at `url`, sending `token` where the document asks for one."""
    return subprocess.run(
        [SCHEMATHESIS, "--config-file", SCHEMATHESIS_CONFIG, "run", OPENAPI_SPEC, "--url", url, *options,
         "--max-examples", str(examples), "--seed", str(SEED),
         "--workers", "1", "--generation-database", "none", "--request-timeout", "10", "--no-color"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "SHOP_SCHEMATHESIS_TOKEN": token})


def test_gateway_serves_the_openapi_document(stack):
    with urllib.request.urlopen(stack.url + "/openapi.yaml", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/yaml")
        assert response.read() == OPENAPI_SPEC.read_bytes()


def test_document_is_openapi_3_1_and_covers_every_gateway_route(spec):
    assert spec["openapi"] == "3.1.0"
    settings = load_settings()
    # The proxied routes and the gateway's own paths (each a RequestHandler with a GET only).
    served = [(route.path, set(route.methods)) for route in make_app(settings).routes] + \
        [(re.compile(pattern), {"GET"}) for pattern, _, _ in own_routes(settings)]
    documented = {path: {m.upper() for m in operations if m != "parameters"}
                  for path, operations in spec["paths"].items()}
    for regex, methods in served:
        # HEAD goes with every GET (RFC 9110 9.3.2) and is left implicit in the document, as schemathesis takes it.
        methods -= {"HEAD"}
        matching = [path for path in documented if regex.fullmatch(path.replace("{", "").replace("}", ""))]
        assert matching, f"route {regex.pattern} is not in openapi.yaml"
        assert documented[matching[0]] == methods, \
            f"{regex.pattern}: served {methods}, documented {documented[matching[0]]}"
    # And nothing more: the document is the public port's (`/ready` and `/metrics` are on the admin port).
    for path in documented:
        concrete = path.replace("{", "").replace("}", "")
        assert any(regex.fullmatch(concrete) for regex, _ in served), \
            f"{path} is documented but not served on the gateway's public port"


def test_document_says_who_may_call_each_operation(spec):
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert set(schemes["oauth2"]["flows"]["clientCredentials"]["scopes"]) == {"shop:topup", "shop:admin"}
    assert {"bearerAuth": []} in spec["security"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            if path in PUBLIC_ROUTES:
                assert operation["security"] == [], f"{method} {path} needs no token"
                continue
            assert {"bearerAuth": []} in operation.get("security", spec["security"]), f"{method} {path}"
            responses = operation["responses"]
            assert responses["401"] == {"$ref": "#/components/responses/Unauthorized"}, f"{method} {path}"
            # Another user's order is the 404 of an unknown one: that operation never answers 403.
            if operation["operationId"] == "getOrder":
                assert "403" not in responses and "another user" in responses["404"]["description"]
            else:
                assert responses["403"] == {"$ref": "#/components/responses/Forbidden"}, f"{method} {path}"
    refusals = spec["components"]["responses"]
    assert refusals["Unauthorized"]["headers"]["WWW-Authenticate"] == {"$ref": "#/components/headers/BearerChallenge"}
    assert spec["components"]["headers"]["BearerChallenge"]["required"] is True


def test_schemathesis_finds_no_server_error_and_no_response_breaking_the_spec(stack, issuer, tmp_path):
    # The admin's token may do everything: valid input is accepted, invalid input rejected, and `ignored_auth`
    # checks that each operation refuses the same request without a token and with a made-up one.
    done = schemathesis(stack.url, issuer.token(admin=True), tmp_path, "--checks", "all")
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "generated" in done.stdout


def test_schemathesis_with_a_plain_users_token_meets_only_documented_refusals(stack, issuer, tmp_path):
    # Mostly other users' accounts and orders: every 403 and 404 must be documented, with its envelope and header.
    # Valid input is refused here, so positive_data_acceptance is the admin run's.
    done = schemathesis(stack.url, issuer.token(PLAIN_USER), tmp_path, "--checks", "all",
                        "--exclude-checks", "positive_data_acceptance", examples=EXAMPLES_PER_ROUTE // 2)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "generated" in done.stdout
