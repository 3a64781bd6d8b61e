"""Bearer-token verification (`common.web.auth`) against keys made here and a JWKS served in-process: every way a
token can lie is refused with a 401 that says why, and the key set follows the issuer (rotation, outage)."""
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tornado import web
from tornado.httpserver import HTTPServer

from common.domain.errors import Forbidden, Unauthenticated
from common.runtime.config import AuthSettings, ConfigurationError, load_auth_settings
from common.web.auth import (
    ADMIN,
    KEY_REFETCH_INTERVAL,
    LEEWAY,
    MAX_TOKEN_BYTES,
    OPEN,
    TOPUP,
    Authenticator,
    Principal,
)
from harness.stack import free_port

AUDIENCE = "urn:shop:api"


class Issuer:
    """Keys made in the test and an issuer serving their JWKS (and discovery) on a local port; counts fetches."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/issuer"
        self.keys = {}  # kid: private key
        self.published = []  # kids in the JWKS
        self.fetches = 0
        self.down = False
        self.add_key("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self.add_key("ec-1", ec.generate_private_key(ec.SECP256R1()))
        issuer = self

        class Discovery(web.RequestHandler):
            def get(self):
                self.write({"issuer": issuer.url, "jwks_uri": f"{issuer.url}/jwks"})

        class Keys(web.RequestHandler):
            def get(self):
                issuer.fetches += 1
                if issuer.down:
                    raise web.HTTPError(503)
                self.write({"keys": [issuer.public_jwk(kid) for kid in issuer.published]})

        self.server = HTTPServer(web.Application([
            (r"/issuer/.well-known/openid-configuration", Discovery), (r"/issuer/jwks", Keys)]))
        self.server.listen(self.port, "127.0.0.1")

    def add_key(self, kid, key, publish=True):
        self.keys[kid] = key
        if publish:
            self.published.append(kid)

    def public_jwk(self, kid):
        key = self.keys[kid]
        algorithm = jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
        jwk = json.loads(algorithm.to_jwk(key.public_key()))
        return {**jwk, "kid": kid, "use": "sig", "alg": "RS256" if algorithm is jwt.algorithms.RSAAlgorithm
                else "ES256"}

    def token(self, kid="rsa-1", headers=None, **claims):
        now = int(time.time())
        payload = {"iss": self.url, "aud": AUDIENCE, "sub": "user-7", "exp": now + 300, "iat": now,
                   "shop_user_id": 7, "scope": "", **claims}
        payload = {k: v for k, v in payload.items() if v is not None}
        alg = "RS256" if kid.startswith("rsa") else "ES256"
        return jwt.encode(payload, self.keys[kid], algorithm=alg,
                          headers={"kid": kid, "typ": "at+jwt", **(headers or {})})

    def settings(self, **changes):
        return AuthSettings(**{"mode": "jwt", "issuer": self.url, "audience": AUDIENCE, **changes})

    def stop(self):
        self.server.stop()


@pytest.fixture
def issuer(io_loop):
    issuer = Issuer()
    yield issuer
    issuer.stop()


async def loaded(settings):
    auth = Authenticator(settings)
    await auth.keys.refresh()
    return auth


async def refusal(auth, authorization):
    with pytest.raises(Unauthenticated) as refused:
        await auth.authenticate(authorization)
    return refused.value.message, refused.value.challenge


def bearer(token):
    return f"Bearer {token}"


@pytest.mark.gen_test
async def test_a_token_of_the_issuer_for_the_audience_speaks_for_its_user_with_its_scopes(issuer):
    auth = await loaded(issuer.settings())
    assert await auth.authenticate(bearer(issuer.token(scope=f"{TOPUP} other"))) == \
        Principal("user-7", 7, frozenset((TOPUP, "other")))
    es256 = issuer.token("ec-1", shop_user_id="8", sub="user-8", scope=None, scp=[ADMIN])
    assert await auth.authenticate(f"bearer  {es256} ") == Principal("user-8", 8, frozenset((ADMIN,)))
    plain_jwt = issuer.token(headers={"typ": "JWT"})  # Keycloak's access tokens say JWT
    assert (await auth.authenticate(bearer(plain_jwt))).user_id == 7


@pytest.mark.gen_test
async def test_an_admin_client_token_needs_no_user_and_sees_everyone(issuer):
    auth = await loaded(issuer.settings())
    admin = await auth.authenticate(bearer(issuer.token(sub="shop-admin", shop_user_id=None, scope=ADMIN)))
    assert (admin.user_id, admin.is_admin, admin.own_user()) == (None, True, None)
    admin.act_for(12)
    admin.top_up(12)


@pytest.mark.gen_test
async def test_no_token_or_another_scheme_is_a_401_without_an_error_code(issuer):
    auth = await loaded(issuer.settings())
    for header in (None, "", "Bearer", "Bearer   ", f"Basic {issuer.token()}", issuer.token()):
        assert await refusal(auth, header) == \
            ("A bearer token is required (Authorization: Bearer <access token>).", "Bearer")


@pytest.mark.gen_test
async def test_unsigned_and_hmac_tokens_are_refused_even_when_keyed_with_the_public_key(issuer):
    auth = await loaded(issuer.settings())
    claims = {"iss": issuer.url, "aud": AUDIENCE, "sub": "user-7", "exp": int(time.time()) + 60, "shop_user_id": 7}
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "rsa-1"})
    public_pem = issuer.keys["rsa-1"].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    # PyJWT itself refuses to sign HMAC with a PEM: forge it as an attacker would, by hand.
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "at+jwt"}).encode())
    payload = jwt.utils.base64url_encode(json.dumps(claims).encode())
    signature = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).sign(
        header + b"." + payload, public_pem)
    forged = b".".join((header, payload, jwt.utils.base64url_encode(signature))).decode()
    assert await refusal(auth, bearer(unsigned)) == \
        ("The bearer token is invalid: the algorithm 'none' is not accepted.", 'Bearer error="invalid_token"')
    assert (await refusal(auth, bearer(forged)))[0] == \
        "The bearer token is invalid: the algorithm 'HS256' is not accepted."


@pytest.mark.gen_test
async def test_an_issuer_that_differs_by_a_suffix_or_a_missing_character_is_refused(issuer):
    auth = await loaded(issuer.settings())
    for iss in (issuer.url + "/", issuer.url + "x", issuer.url[:-1], issuer.url.upper()):
        assert (await refusal(auth, bearer(issuer.token(iss=iss))))[0] == \
            "The bearer token is invalid: invalid issuer.", iss


@pytest.mark.gen_test
async def test_a_token_for_another_audience_is_refused_and_one_among_several_audiences_accepted(issuer):
    auth = await loaded(issuer.settings())
    for aud in ("urn:shop:apix", "urn:other", ["urn:other"]):
        assert (await refusal(auth, bearer(issuer.token(aud=aud))))[0] == \
            "The bearer token is invalid: audience doesn't match.", aud
    assert (await auth.authenticate(bearer(issuer.token(aud=["urn:other", AUDIENCE])))).user_id == 7


@pytest.mark.gen_test
async def test_expiry_and_not_before_are_honoured_to_the_leeway(issuer):
    auth = await loaded(issuer.settings())
    now = int(time.time())
    assert (await refusal(auth, bearer(issuer.token(exp=now - LEEWAY - 2))))[0] == \
        "The bearer token is invalid: signature has expired."
    assert (await auth.authenticate(bearer(issuer.token(exp=now - LEEWAY + 5)))).user_id == 7
    assert (await refusal(auth, bearer(issuer.token(nbf=now + LEEWAY + 5))))[0] == \
        "The bearer token is invalid: the token is not yet valid (nbf)."
    assert (await auth.authenticate(bearer(issuer.token(nbf=now + LEEWAY - 5)))).user_id == 7


@pytest.mark.gen_test
async def test_missing_claims_and_headers_are_named(issuer):
    auth = await loaded(issuer.settings())
    for claim in ("exp", "iss", "aud", "sub"):
        assert (await refusal(auth, bearer(issuer.token(**{claim: None}))))[0] == \
            f'The bearer token is invalid: token is missing the "{claim}" claim.', claim
    no_kid = jwt.encode({"sub": "x"}, issuer.keys["rsa-1"], algorithm="RS256")
    assert (await refusal(auth, bearer(no_kid)))[0] == "The bearer token is invalid: the token names no key (kid)."
    id_token = issuer.token(headers={"typ": "id_token+jwt"})
    assert (await refusal(auth, bearer(id_token)))[0] == \
        "The bearer token is invalid: a token of type 'id_token+jwt' is not an access token."
    for user in (0, -3, "7a", True, 2.5):
        assert (await refusal(auth, bearer(issuer.token(shop_user_id=user))))[0] == \
            "The bearer token is invalid: the claim shop_user_id is not a positive integer.", user
    assert (await refusal(auth, bearer("not.a.jwt")))[0] == "The bearer token is invalid: the token is not a JWT."


@pytest.mark.gen_test
async def test_an_oversize_token_is_refused_before_it_is_parsed(issuer):
    auth = await loaded(issuer.settings())
    huge = issuer.token(padding="x" * MAX_TOKEN_BYTES)
    assert (await refusal(auth, bearer(huge)))[0] == "The bearer token is invalid: the token is too long."


@pytest.mark.gen_test
async def test_a_signature_by_an_unpublished_key_under_a_known_kid_is_refused(issuer):
    auth = await loaded(issuer.settings())
    issuer.add_key("rsa-1", rsa.generate_private_key(public_exponent=65537, key_size=2048), publish=False)
    impostor = issuer.token()  # signed by another key that claims the published kid
    assert (await refusal(auth, bearer(impostor)))[0] == "The bearer token is invalid: signature verification failed."


@pytest.mark.gen_test
async def test_an_unknown_kid_refetches_the_keys_once_per_interval_so_a_rotated_key_is_taken_without_restart(issuer):
    auth = await loaded(issuer.settings())
    assert issuer.fetches == 1
    issuer.add_key("rsa-2", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    auth.keys._last_fetch -= KEY_REFETCH_INTERVAL  # the last fetch was an interval ago
    assert (await auth.authenticate(bearer(issuer.token("rsa-2")))).user_id == 7
    assert issuer.fetches == 2
    for n in range(20):  # made-up kids within the interval: no fetch at all
        assert (await refusal(auth, bearer(issuer.token("rsa-2", headers={"kid": f"made-up-{n}"}))))[0] == \
            f"The bearer token is invalid: the key 'made-up-{n}' is unknown."
    assert issuer.fetches == 2


@pytest.mark.gen_test
async def test_keys_are_kept_while_the_issuer_is_down(issuer):
    auth = await loaded(issuer.settings())
    issuer.down = True
    await auth.keys.refresh()
    assert issuer.fetches == 2 and auth.ready
    assert (await auth.authenticate(bearer(issuer.token(sub="user-9", shop_user_id=9)))).user_id == 9


@pytest.mark.gen_test
async def test_a_process_whose_keys_never_loaded_is_not_ready_and_refuses_every_token(issuer):
    issuer.down = True
    auth = await loaded(issuer.settings())
    assert not auth.ready
    assert (await refusal(auth, bearer(issuer.token())))[0] == \
        "The bearer token is invalid: the issuer's keys are not loaded yet."
    issuer.down = False
    await auth.keys.refresh()
    assert auth.ready and (await auth.authenticate(bearer(issuer.token()))).user_id == 7


@pytest.mark.gen_test
async def test_a_token_that_comes_while_the_first_keys_are_being_fetched_waits_for_them(issuer):
    auth = Authenticator(issuer.settings())
    auth.start()  # the first fetch is under way, not done
    try:
        assert not auth.ready
        assert (await auth.authenticate(bearer(issuer.token()))).user_id == 7
        assert issuer.fetches == 1  # the token waited for that fetch, it did not start another
    finally:
        await auth.stop()


@pytest.mark.gen_test
async def test_a_discovery_document_naming_another_issuer_is_not_trusted(issuer):
    auth = await loaded(issuer.settings(issuer=issuer.url.replace("127.0.0.1", "localhost")))
    assert not auth.ready
    direct = await loaded(issuer.settings(jwks_url=f"{issuer.url}/jwks"))  # AUTH_JWKS_URL skips discovery
    assert direct.ready


@pytest.mark.gen_test
async def test_a_verified_token_is_remembered_until_it_expires(issuer):
    auth = await loaded(issuer.settings())
    token = issuer.token(exp=int(time.time()) + 2)
    assert (await auth.authenticate(bearer(token))).user_id == 7
    issuer.keys.clear()  # a second verification would now fail: the first one's answer is used
    auth.keys.keys.clear()
    assert (await auth.authenticate(bearer(token))).user_id == 7
    auth.verifier._verified[token] = (auth.verifier._verified[token][0], time.time() - 1)
    assert (await refusal(auth, bearer(token)))[0] == "The bearer token is invalid: the key 'rsa-1' is unknown."


@pytest.mark.gen_test
async def test_with_auth_off_everyone_is_the_open_principal():
    auth = Authenticator(AuthSettings("off"))
    assert auth.ready and await auth.authenticate(None) is OPEN
    OPEN.act_for(5)
    OPEN.top_up(5)


def test_a_user_may_act_for_itself_only_and_top_up_only_with_its_scope():
    user = Principal("user-7", 7, frozenset())
    user.act_for(7)
    assert (user.may_see(7), user.may_see(8), user.own_user()) == (True, False, 7)
    with pytest.raises(Forbidden, match="^This token does not allow acting for user 8.$"):
        user.act_for(8)
    with pytest.raises(Forbidden) as refused:
        user.top_up(7)
    assert (refused.value.message, refused.value.challenge) == \
        ("Topping up needs the scope shop:topup.", 'Bearer error="insufficient_scope", scope="shop:topup"')
    Principal("user-7", 7, frozenset((TOPUP,))).top_up(7)
    with pytest.raises(Forbidden):
        Principal("user-7", 7, frozenset((TOPUP,))).top_up(8)
    with pytest.raises(Forbidden, match="^This token speaks for no user.$"):
        Principal("machine", None, frozenset()).own_user()


def test_auth_mode_has_no_default_and_jwt_needs_an_issuer_and_an_audience():
    for mode in (None, "", "JWT", "none"):
        with pytest.raises(ConfigurationError, match="AUTH_MODE must be jwt .* or off .*there is no default"):
            load_auth_settings({} if mode is None else {"AUTH_MODE": mode})
    with pytest.raises(ConfigurationError, match="^AUTH_MODE=jwt needs AUTH_ISSUER and AUTH_AUDIENCE$"):
        load_auth_settings({"AUTH_MODE": "jwt"})
    assert load_auth_settings({"AUTH_MODE": "jwt", "AUTH_ISSUER": "https://id", "AUTH_AUDIENCE": "a",
                               "AUTH_JWKS_URL": ""}) == AuthSettings("jwt", "https://id", None, "a", "shop_user_id")
    assert load_auth_settings({"AUTH_MODE": "off", "AUTH_ISSUER": "ignored"}) == AuthSettings("off")
