"""Run Shopping.postman_collection.json with newman (installed by scripts/install-tools.sh) and read its report."""
import json
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTION = ROOT / "Shopping.postman_collection.json"
NEWMAN = ROOT / "tools" / "node_modules" / ".bin" / "newman"


# The seed's walk-through: 1 and 4 are sent twice; 7 repeats only while the payment is still in flight.
SEED_SEQUENCE = [
    ("1 Create Account", 201), ("1 Create Account", 409), ("2 Top Up Account", 200), ("3 Get Balance", 200),
    ("4 Create Order", 201), ("4 Create Order", 201), ("5 Get All Orders", 200), ("6 Get Orders of the user", 200),
]


@dataclass
class NewmanRun:
    returncode: int
    output: str
    requests: list      # (request name, HTTP status) in the order newman sent them
    failures: list      # (request name, assertion, error message)
    assertions: int

    @property
    def ok(self):
        return self.returncode == 0 and not self.failures


def fresh_user_id():
    """A random user id, so that runs against one stack (or one compose volume) never share an account."""
    return 10**9 + secrets.randbelow(10**12)


def install():
    subprocess.run([ROOT / "scripts" / "install-tools.sh"], check=True, timeout=300)


def run_collection(base_url, user_id, timeout=120):
    """Run the whole collection against `base_url` as `user_id`; raises `subprocess.TimeoutExpired`."""
    install()
    with tempfile.TemporaryDirectory(prefix="newman_") as tmp:
        report_path = Path(tmp) / "report.json"
        done = subprocess.run(
            [NEWMAN, "run", COLLECTION, "--env-var", f"baseUrl={base_url}", "--env-var", f"user_id={user_id}",
             "--timeout-request", "10000", "--reporters", "cli,json", "--reporter-json-export", report_path,
             "--color", "off", "--disable-unicode"],
            capture_output=True, text=True, timeout=timeout)
        report = json.loads(report_path.read_text()) if report_path.exists() else {"run": {}}
    executions = report["run"].get("executions", [])
    return NewmanRun(
        returncode=done.returncode,
        output=done.stdout + done.stderr,
        requests=[(e["item"]["name"], e.get("response", {}).get("code")) for e in executions],
        failures=[(f["source"]["name"], f["error"].get("test"), f["error"].get("message"))
                  for f in report["run"].get("failures", [])],
        assertions=sum(len(e.get("assertions", [])) for e in executions),
    )


def check_seed_walkthrough(run):
    """Assert that a newman run passed every assertion and followed the seed's sequence of requests."""
    assert run.ok, f"newman failed: {run.failures}\n{run.output[-4000:]}"
    assert run.requests[:len(SEED_SEQUENCE)] == SEED_SEQUENCE
    status_polls, ledger = run.requests[len(SEED_SEQUENCE):-1], run.requests[-1]
    assert status_polls and all(request == ("7 Get Order Status", 200) for request in status_polls)
    assert ledger == ("8 Get Account Movements", 200)
    # Per request: its envelope check and its own checks; 7 adds the final statuses of both orders.
    assert run.assertions >= 2 * len(run.requests) + 2
