"""Who a request speaks for: OAuth 2.0 bearer access tokens (JWT, RFC 9068) verified against an OpenID Connect
issuer's keys, and the rules of who may act for whom.

    KeyStore        the issuer's JWKS: found by discovery, cached, refetched (rate-limited) on an unknown `kid`,
                    the last good set kept while the issuer is down
    TokenVerifier   one PyJWT `decode` per token (asymmetric algorithms only), its principal cached until `exp`
    Principal       the subject, the user id it speaks for (or none), its scopes; `act_for` and friends raise
                    `Forbidden` (403)
    Authenticator   `authenticate(Authorization header)` → Principal, or `Unauthenticated` (401); with
                    `AUTH_MODE=off` everyone is `OPEN`, the seed's open API

Each service verifies the client's token itself (the gateway passes `Authorization` on untouched), so a request
that reaches a service's port directly is granted exactly what the gateway would grant."""
import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from common.domain.errors import Forbidden, Unauthenticated
from common.runtime.config import AuthSettings
from common.runtime.stopping import cancel

logger = logging.getLogger(__name__)

TOPUP, ADMIN = "shop:topup", "shop:admin"
# Asymmetric only: with an HMAC algorithm in the list, a public key could be used as a shared secret
# (CVE-2022-29217), and `none` would accept an unsigned token.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
# RFC 9068's `at+jwt`; plain `JWT` too, as Keycloak and Auth0 label their access tokens: an ID token, the
# confusion `at+jwt` guards against, is still refused, as its `aud` is the client's id, never the API's.
ACCEPTED_TYPES = frozenset(("at+jwt", "application/at+jwt", "jwt"))
MAX_TOKEN_BYTES = 8192  # far above any real access token; the header alone could be 64 KB
LEEWAY = 10  # seconds of clock skew allowed on `exp`, `nbf` and `iat`
KEY_REFETCH_INTERVAL = 10.0  # an unknown `kid` refetches the JWKS at most this often
KEY_REFRESH_INTERVAL = 300.0  # the JWKS is refreshed this often anyway (removed keys stop verifying)
KEY_RETRY_INTERVAL = 2.0  # until the first JWKS arrives, it is asked for this often
FETCH_TIMEOUT = 5.0
CACHED_TOKENS = 10_000


@dataclass(frozen=True)
class Principal:
    """Whom a request speaks for. `subject` scopes its idempotency keys and names it in the ledger."""
    subject: str
    user_id: int | None
    scopes: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.scopes

    def may_see(self, owner: int) -> bool:
        return self.is_admin or self.user_id == owner

    def act_for(self, user_id: int) -> None:
        """Raises `Forbidden` unless this principal may act for `user_id`."""
        if not self.may_see(user_id):
            raise Forbidden(f"This token does not allow acting for user {user_id}.")

    def top_up(self, user_id: int) -> None:
        """Raises `Forbidden` unless this principal may credit `user_id`'s account (a top-up creates money)."""
        self.act_for(user_id)
        if not (self.is_admin or TOPUP in self.scopes):
            raise Forbidden(f"Topping up needs the scope {TOPUP}.", scope=TOPUP)

    def own_user(self) -> int | None:
        """The user whose data a request that names none is about: its own, or None (everyone's) for an admin."""
        if self.is_admin:
            return None
        if self.user_id is None:
            raise Forbidden("This token speaks for no user.", scope=ADMIN)
        return self.user_id


# AUTH_MODE=off: every request may do everything, as in the seed; idempotency keys are one global scope.
OPEN = Principal("", None, frozenset((ADMIN, TOPUP)))


class KeyStore:
    """The issuer's signing keys by `kid`, loaded without blocking the event loop."""

    def __init__(self, settings: AuthSettings, client: AsyncHTTPClient | None = None) -> None:
        self.settings = settings
        self.client = client or AsyncHTTPClient()
        self.keys: dict[str, jwt.PyJWK] = {}
        self.loaded = False  # a process whose keys never loaded is not ready, and refuses every token
        self._last_fetch = float("-inf")
        self._fetching: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Load the keys in the background: at once, every `KEY_RETRY_INTERVAL` s until they arrive, then every
        `KEY_REFRESH_INTERVAL` s."""
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever(), name="jwks refresh")

    async def stop(self) -> None:
        await cancel(self._refresher, 2, "the signing keys' refresher")

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(KEY_REFRESH_INTERVAL if self.loaded else KEY_RETRY_INTERVAL)

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The key named `kid`; an unknown one refetches the set first, unless that happened in the last
        `KEY_REFETCH_INTERVAL` s (a flood of made-up `kid`s must not become a flood of fetches)."""
        if kid not in self.keys and time.monotonic() - self._last_fetch >= KEY_REFETCH_INTERVAL:
            await self.refresh()
        return self.keys.get(kid)

    async def wait_loaded(self) -> bool:
        """Whether keys are loaded, after waiting for the fetch under way, or one started now if none was tried in
        the last `KEY_RETRY_INTERVAL` s: a token that comes just after start-up waits for the first fetch (a few
        milliseconds) instead of being refused, and while the issuer is down tokens cannot flood it."""
        fetching = self._fetching is not None and not self._fetching.done()
        if not self.loaded and (fetching or time.monotonic() - self._last_fetch >= KEY_RETRY_INTERVAL):
            await self.refresh()
        return self.loaded

    async def refresh(self) -> None:
        """Fetch the key set once (concurrent callers share the fetch); on failure keep the last good one."""
        if self._fetching is None or self._fetching.done():
            self._last_fetch = time.monotonic()
            self._fetching = asyncio.get_running_loop().create_task(self._fetch())
        await asyncio.shield(self._fetching)

    async def _fetch(self) -> None:
        try:
            jwks_url = self.settings.jwks_url or await self._discover()
            keys = signing_keys(await self._get_json(jwks_url))
        except (OSError, HTTPClientError, ValueError, jwt.PyJWTError) as exc:
            logger.warning("keys of %s not (re)loaded, %s: %s", self.settings.issuer,
                           f"keeping {len(self.keys)}" if self.loaded else "refusing tokens", exc)
            return
        if set(keys) != set(self.keys):
            logger.info("keys of %s: %s", self.settings.issuer, ", ".join(sorted(keys)))
        self.keys, self.loaded = keys, True

    async def _discover(self) -> str:
        issuer = self.settings.issuer or ""  # AUTH_MODE=jwt: set, or the settings were refused
        document = await self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
        if document.get("issuer") != issuer:  # OpenID Connect Discovery 1.0, 4.3
            raise ValueError(f"the discovery document names issuer {document.get('issuer')!r}, not {issuer!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ValueError("the discovery document has no jwks_uri")
        return jwks_uri

    async def _get_json(self, url: str) -> dict[str, Any]:
        response = await self.client.fetch(url, request_timeout=FETCH_TIMEOUT, connect_timeout=FETCH_TIMEOUT)
        document = json.loads(response.body)
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not return a JSON object")
        return document


def signing_keys(jwks: dict[str, Any]) -> dict[str, jwt.PyJWK]:
    """The keys of a JWKS that can verify a signature with an allowed algorithm, by `kid`. Raises `ValueError`
    when none can."""
    keys = {}
    for jwk in jwks.get("keys", []) if isinstance(jwks.get("keys"), list) else []:
        if not isinstance(jwk, dict) or not jwk.get("kid") or jwk.get("use", "sig") != "sig":
            continue
        if jwk.get("kty") not in ("RSA", "EC") or jwk.get("alg", "RS256") not in ALGORITHMS:
            continue
        try:
            keys[jwk["kid"]] = jwt.PyJWK(jwk)
        except jwt.PyJWTError as exc:
            logger.warning("key %s of the JWKS is not usable: %s", jwk["kid"], exc)
    if not keys:
        raise ValueError("the JWKS holds no usable signing key")
    return keys


class TokenVerifier:
    """Verifies access tokens and remembers each verified one's principal until it expires."""

    def __init__(self, settings: AuthSettings, keys: KeyStore) -> None:
        self.settings, self.keys = settings, keys
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    async def verify(self, token: str) -> Principal:
        """The principal `token` speaks for; raises `Unauthenticated` saying why it is refused."""
        cached = self._verified.get(token)
        if cached is not None and cached[1] > time.time():
            return cached[0]
        principal, expires = await self._verify(token)
        self._remember(token, principal, expires)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        if len(token) > MAX_TOKEN_BYTES:
            raise invalid_token("the token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid_token("the token is not a JWT") from None
        alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
        if alg not in ALGORITHMS:
            raise invalid_token(f"the algorithm {alg!r} is not accepted")
        if not isinstance(kid, str) or not kid:
            raise invalid_token("the token names no key (kid)")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in ACCEPTED_TYPES):
            raise invalid_token(f"a token of type {typ!r} is not an access token")
        if not await self.keys.wait_loaded():
            raise invalid_token("the issuer's keys are not loaded yet")
        key = await self.keys.key(kid)
        if key is None:
            raise invalid_token(f"the key {kid!r} is unknown")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.settings.audience,
                                issuer=self.settings.issuer, leeway=LEEWAY,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.PyJWTError as exc:
            raise invalid_token(str(exc).rstrip(".").lower()) from None
        return self._principal(claims), float(claims["exp"])

    def _principal(self, claims: dict[str, Any]) -> Principal:
        user = claims.get(self.settings.user_claim)
        if user is not None:
            user = user_id_of(user)
            if user is None:
                raise invalid_token(f"the claim {self.settings.user_claim} is not a positive integer")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise invalid_token("the subject (sub) is not a string")
        return Principal(claims["sub"], user, scopes_of(claims))

    def _remember(self, token: str, principal: Principal, expires: float) -> None:
        self._verified[token] = (principal, expires)
        if len(self._verified) > CACHED_TOKENS:
            self._verified.popitem(last=False)  # the oldest verified first


def user_id_of(value: object) -> int | None:
    """A user claim as a positive integer (a JSON number or a numeric string), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        value = int(value)
    return value if isinstance(value, int) and 0 < value < 2**63 else None


def scopes_of(claims: Mapping[str, Any]) -> frozenset[str]:
    """The token's scopes: `scope` (space-separated, RFC 8693/9068), else an `scp` array (or string)."""
    scope = claims.get("scope", claims.get("scp", ""))
    if isinstance(scope, str):
        return frozenset(scope.split())
    if isinstance(scope, list):
        return frozenset(s for s in scope if isinstance(s, str))
    return frozenset()


def invalid_token(reason: str) -> Unauthenticated:
    return Unauthenticated(f"The bearer token is invalid: {reason}.", error="invalid_token")


class Authenticator:
    """`authenticate(authorization)`: the principal of a request's `Authorization` header value."""

    def __init__(self, settings: AuthSettings, client: AsyncHTTPClient | None = None) -> None:
        self.settings = settings
        self.keys = KeyStore(settings, client) if settings.mode == "jwt" else None
        self.verifier = TokenVerifier(settings, self.keys) if self.keys else None

    def start(self) -> None:
        if self.keys:
            self.keys.start()

    async def stop(self) -> None:
        if self.keys:
            await self.keys.stop()

    @property
    def ready(self) -> bool:
        return self.keys is None or self.keys.loaded

    async def authenticate(self, authorization: str | None) -> Principal:
        """Raises `Unauthenticated`: without an error code when no bearer token came (RFC 6750 3.1), with
        `invalid_token` when it fails verification."""
        if self.verifier is None:
            return OPEN
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("A bearer token is required (Authorization: Bearer <access token>).")
        return await self.verifier.verify(token)
