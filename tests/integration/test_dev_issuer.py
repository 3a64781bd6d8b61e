"""The development issuer (deploy/issuer/issuer.js via harness.issuer.DevIssuer) mints the access tokens the
services will accept: JWTs that PyJWT verifies against its JWKS, with the user claim, scopes and key rotation
the services rely on. Needs Node, not PostgreSQL or RabbitMQ."""
import json
import os
import subprocess
import sys
import urllib.request

import jwt
import pytest

from harness.issuer import DevIssuer
from harness.stack import ROOT


@pytest.fixture(scope="module")
def issuer():
    with DevIssuer() as issuer:
        yield issuer


def published_keys(issuer):
    with urllib.request.urlopen(issuer.jwks_url, timeout=10) as response:
        return jwt.PyJWKSet.from_dict(json.load(response))


def verified(issuer, token):
    """The claims of `token` once verified as a service will: asymmetric algorithms only, issuer and audience."""
    header = jwt.get_unverified_header(token)
    key = published_keys(issuer)[header["kid"]]
    return jwt.decode(token, key, algorithms=["RS256", "ES256"], issuer=issuer.url, audience=issuer.audience,
                      options={"require": ["exp", "iat", "iss", "aud", "sub"]})


def test_a_user_token_verifies_and_carries_the_user_id_as_a_number(issuer):
    token = issuer.token(42)
    claims = verified(issuer, token)
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "at+jwt" and header["alg"] == "RS256" and header["kid"]
    assert claims[issuer.user_claim] == 42 and type(claims[issuer.user_claim]) is int
    assert claims["client_id"] == claims["sub"] == "user-42"
    assert claims["exp"] - claims["iat"] == 600
    assert "scope" not in claims  # nothing asked for, nothing granted


def test_a_user_token_asked_with_topup_has_scope_shop_topup(issuer):
    claims = verified(issuer, issuer.token(7, topup=True))
    assert claims["scope"] == "shop:topup" and claims[issuer.user_claim] == 7


def test_the_largest_user_id_survives_as_an_exact_json_number(issuer):
    assert verified(issuer, issuer.token(999_999_999_999_999))[issuer.user_claim] == 999_999_999_999_999


def test_a_user_client_asking_for_shop_admin_is_refused(issuer):
    status, body = issuer.token_response("user-42", scope="shop:admin")
    assert (status, body["error"]) == (400, "invalid_scope")


def test_the_admin_token_has_shop_admin_and_no_user_claim(issuer):
    claims = verified(issuer, issuer.token(admin=True))
    assert claims["scope"] == "shop:admin" and claims["sub"] == "shop-admin"
    assert issuer.user_claim not in claims


@pytest.mark.parametrize("client_id, secret", [
    ("user-42", "not-the-secret-at-all"),
    ("shop-admin", "not-the-secret-at-all"),
    ("nobody", None),
    ("user-042", None),
    ("user-0", None),
    ("user-1234567890123456", None),
])
def test_a_wrong_secret_or_an_unknown_client_is_refused(issuer, client_id, secret):
    status, body = issuer.token_response(client_id, secret)
    assert (status, body["error"]) == (401, "invalid_client")


def test_an_es256_token_verifies(issuer):
    token = issuer.token(42, alg="ES256")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    assert verified(issuer, token)[issuer.user_claim] == 42


def test_a_token_for_another_audience_is_refused(issuer):
    status, body = issuer.token_response("user-42", resource="https://elsewhere.example")
    assert (status, body["error"]) == (400, "invalid_target")


def test_scripts_access_token_py_prints_a_token_that_verifies(issuer):
    env = {**os.environ, "AUTH_ISSUER": issuer.url, "DEV_ISSUER_SECRET": issuer.secret}
    printed = subprocess.run([sys.executable, ROOT / "scripts" / "access_token.py", "42", "--topup"], env=env,
                             capture_output=True, text=True, check=True, timeout=30).stdout
    claims = verified(issuer, printed.strip())
    assert claims[issuer.user_claim] == 42 and claims["scope"] == "shop:topup"


def test_scripts_access_token_py_names_a_wrong_secret(issuer):
    env = {**os.environ, "AUTH_ISSUER": issuer.url, "DEV_ISSUER_SECRET": "not-the-secret-at-all"}
    result = subprocess.run([sys.executable, ROOT / "scripts" / "access_token.py", "--admin"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and result.stdout == ""
    assert "invalid_client" in result.stderr and "DEV_ISSUER_SECRET" in result.stderr


# Last in the module: the issuer signs with a new key afterwards.
def test_after_rotation_a_new_key_signs_and_the_old_one_is_still_published(issuer):
    old_token = issuer.token(42)
    old_kid = jwt.get_unverified_header(old_token)["kid"]
    issuer.rotate()
    new_token = issuer.token(42)
    new_kid = jwt.get_unverified_header(new_token)["kid"]
    assert new_kid != old_kid
    assert {old_kid, new_kid} <= {key.key_id for key in published_keys(issuer).keys}
    assert verified(issuer, old_token)[issuer.user_claim] == verified(issuer, new_token)[issuer.user_claim] == 42
