"""Run Shopping.postman_collection.json with newman (installed by scripts/install-tools.sh) and read its report."""
import json
import secrets
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = ROOT / "Shopping.postman_collection.json"
NEWMAN = ROOT / "tools" / "node_modules" / ".bin" / "newman"


# The seed's walk-through: 1 and 4 are sent twice; 7 once, a blocking read (`?wait=5`) answered when the order is
# final (the seed polled it); then 8, the ledger.
SEED_SEQUENCE = [
    ("1 Create Account", 201), ("1 Create Account", 409), ("2 Top Up Account", 200), ("3 Get Balance", 200),
    ("4 Create Order", 201), ("4 Create Order", 201), ("5 Get All Orders", 200), ("6 Get Orders of the user", 200),
    ("7 Get Order Status", 200), ("8 Get Account Movements", 200),
]


@dataclass
class NewmanRun:
    returncode: int
    output: str
    requests: list      # (request name, HTTP status) in the order newman sent them
    failures: list      # (request name, assertion, error message)
    assertions: int
    tests: list = field(default_factory=list)  # (request name, assertion, passed) of every assertion

    @property
    def ok(self):
        return self.returncode == 0 and not self.failures


def fresh_user_id():
    """A random user id, so that runs against one stack (or one compose volume) never share an account."""
    return 10**9 + secrets.randbelow(10**12)


def install():
    subprocess.run([ROOT / "scripts" / "install-tools.sh"], check=True, timeout=300)


def run_collection(base_url, user_id, timeout=120, issuer_url="", client_secret=""):
    """Run the whole collection against `base_url` as `user_id`; raises `subprocess.TimeoutExpired`.

    `issuer_url`: the OpenID Connect issuer the collection gets its access tokens from (client `user-<user_id>`,
    client credentials); empty, it asks for none and sends no Authorization header (an AUTH_MODE=off stack).
    `client_secret`: that client's secret; empty keeps the collection's default, the development issuer's
    (`DEV_ISSUER_SECRET` in .env)."""
    install()
    variables = {"baseUrl": base_url, "user_id": user_id, "issuerUrl": issuer_url}
    if client_secret:
        variables["clientSecret"] = client_secret
    with tempfile.TemporaryDirectory(prefix="newman_") as tmp:
        report_path = Path(tmp) / "report.json"
        done = subprocess.run(
            [NEWMAN, "run", COLLECTION, *(arg for name, value in variables.items()
                                          for arg in ("--env-var", f"{name}={value}")),
             "--timeout-request", "10000", "--reporters", "cli,json", "--reporter-json-export", report_path,
             "--color", "off", "--disable-unicode"],
            capture_output=True, text=True, timeout=timeout)
        report = json.loads(report_path.read_text()) if report_path.exists() else {"run": {}}
    executions = item_runs(report["run"].get("executions", []))
    return NewmanRun(
        returncode=done.returncode,
        output=done.stdout + done.stderr,
        requests=[(e["item"]["name"], e.get("response", {}).get("code")) for e in executions],
        failures=[(f["source"]["name"], f["error"].get("test"), f["error"].get("message"))
                  for f in report["run"].get("failures", [])],
        assertions=sum(len(e.get("assertions", [])) for e in executions),
        tests=[(e["item"]["name"], a["assertion"], "error" not in a)
               for e in executions for a in e.get("assertions", [])],
    )


def item_runs(executions):
    """One entry per run of a request of the collection. Newman's JSON report adds an entry for every request sent,
    a script's `pm.sendRequest` too (the access token, the check without a token, 7's look at the first order), and
    all entries of one run of an item are the same object (same `cursor.ref`, its last response, every assertion)."""
    runs = {}
    for execution in executions:
        runs.setdefault(execution.get("cursor", {}).get("ref") or id(execution), execution)
    return list(runs.values())


def check_seed_walkthrough(run):
    """Assert that a newman run passed every assertion and followed the seed's sequence of requests."""
    assert run.ok, f"newman failed: {run.failures}\n{run.output[-4000:]}"
    assert run.requests == SEED_SEQUENCE
    # Per request: its envelope check and its own checks; 7 adds the final statuses of both orders.
    assert run.assertions >= 2 * len(run.requests) + 2
