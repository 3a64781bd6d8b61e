"""The development OpenID Connect issuer (deploy/issuer/issuer.js, panva's oidc-provider) as a subprocess for
tests: its own free port, a temporary keys file and a random client secret.

    with DevIssuer() as issuer:
        stack = Stack(extra_env=issuer.env())
        headers = {"Authorization": f"Bearer {issuer.token(42, topup=True)}"}
"""
import base64
import json
import logging
import os
import secrets
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from harness.stack import ROOT, free_port

logger = logging.getLogger(__name__)

ISSUER_DIR = ROOT / "deploy" / "issuer"
AUDIENCE = "urn:shop:api"
USER_CLAIM = "shop_user_id"
# A cached token is replaced this long before it expires, so a test never sends one that lapses in flight.
RENEW_BEFORE = 60


class DevIssuer:
    def __init__(self, ttl=600):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.audience, self.user_claim = AUDIENCE, USER_CLAIM
        self.secret = secrets.token_urlsafe(24)
        self._dir = tempfile.TemporaryDirectory(prefix="dev_issuer_")
        self.log_path = Path(self._dir.name) / "issuer.log"
        self._process_env = {
            **os.environ,
            "AUTH_ISSUER": self.url, "AUTH_AUDIENCE": AUDIENCE, "AUTH_USER_CLAIM": USER_CLAIM,
            "DEV_ISSUER_PORT": str(self.port), "DEV_ISSUER_LISTEN_ADDRESS": "127.0.0.1",
            "DEV_ISSUER_SECRET": self.secret, "DEV_ISSUER_KEYS": str(Path(self._dir.name) / "keys.json"),
            "DEV_ISSUER_ALG": "RS256", "DEV_ISSUER_TOKEN_TTL": str(ttl),
        }
        self._popen = None
        self._tokens = {}
        self.jwks_url = self.token_endpoint = None

    def env(self):
        """What a service under test needs to verify this issuer's tokens."""
        return {"AUTH_MODE": "jwt", "AUTH_ISSUER": self.url, "AUTH_AUDIENCE": self.audience,
                "AUTH_USER_CLAIM": self.user_claim}

    def start(self, timeout=30):
        if not (ISSUER_DIR / "node_modules").exists():
            subprocess.run([ROOT / "scripts" / "install-tools.sh", "issuer"], check=True)
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(["node", ISSUER_DIR / "issuer.js"], cwd=ROOT, env=self._process_env,
                                           stdout=log, stderr=subprocess.STDOUT)
        for attempt in Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(0.05), reraise=True,
                                retry=retry_if_exception_type(OSError)):
            with attempt:
                if self._popen.poll() is not None:
                    raise RuntimeError(f"dev issuer exited ({self._popen.returncode}):\n{self.log()[-3000:]}")
                with urllib.request.urlopen(f"{self.url}/.well-known/openid-configuration", timeout=2) as response:
                    discovery = json.load(response)
        self.jwks_url, self.token_endpoint = discovery["jwks_uri"], discovery["token_endpoint"]
        logger.info("dev issuer %s ready in %.2f s", self.url, time.monotonic() - started)
        return self

    def _halt(self):
        if self._popen is not None and self._popen.poll() is None:
            self._popen.terminate()
            try:
                self._popen.wait(10)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()

    def stop(self):
        self._halt()
        self._dir.cleanup()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def log(self):
        return self.log_path.read_text(errors="replace")

    def rotate(self):
        """Add a new signing key (the old ones stay published) and restart on the same port, so it signs."""
        subprocess.run(["node", ISSUER_DIR / "issuer.js", "rotate"], cwd=ROOT, env=self._process_env, check=True,
                       capture_output=True)
        self._halt()
        self._tokens.clear()
        self.start()

    def token_response(self, client_id, secret=None, **form):
        """POST a client-credentials request as `client_id`; return (HTTP status, JSON body)."""
        credentials = f"{client_id}:{self.secret if secret is None else secret}"
        request = urllib.request.Request(
            self.token_endpoint, data=urllib.parse.urlencode({"grant_type": "client_credentials", **form}).encode(),
            headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)

    def token(self, user_id=None, *, topup=False, admin=False, alg=None):
        """An access token of user `user_id` (with scope shop:topup if `topup`) or of the operator (`admin`)."""
        if admin == (user_id is not None) or (admin and topup):
            raise ValueError("a user id (optionally topup) or admin")
        key = (user_id, topup, admin, alg)
        cached = self._tokens.get(key)
        if cached and time.time() < cached[1] - RENEW_BEFORE:
            return cached[0]
        form = {"scope": "shop:admin" if admin else "shop:topup"} if admin or topup else {}
        if alg:
            form["alg"] = alg
        status, body = self.token_response("shop-admin" if admin else f"user-{user_id}", **form)
        if status != 200:
            raise RuntimeError(f"dev issuer refused a token ({status}): {body}")
        self._tokens[key] = body["access_token"], time.time() + body["expires_in"]
        return body["access_token"]
