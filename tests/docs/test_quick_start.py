"""The README's quick start, run as a new user would: its commands are read from the README (the fenced blocks
under "Quick start" and "Try it"), not retyped here, and run in a fresh copy of the checkout: start everything
with the quick start's command, get a token and create an account, a top-up and an order with the "Try it"
commands, see the order paid, and stop it all with Ctrl-C.

Only what must not collide with the machine's other users is changed, through the environment (which overrides
`.env`, as the README says): free ports instead of 8080-8083 and 9080-9082, and databases and a vhost of this
test's own on the machine's PostgreSQL and RabbitMQ. The copy shares the checkout's `.venv` (set up by
`./test.sh`), so the run takes seconds, not a fresh install's minutes."""
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from harness.infra import INFRA
from harness.stack import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
QUICK_START, TRY_IT = "## Quick start", "### Try it"
PUBLIC_GATEWAY = "localhost:8080"  # the address the README's commands use


def fenced_block_under(heading: str, text: str) -> list[str]:
    """The command lines of the first ```sh block after `heading` (each without its trailing comment)."""
    start = text.index(heading)
    block = re.search(r"```sh\n(.*?)```", text[start:], flags=re.S)
    assert block, f"README: no sh block under {heading!r}"
    return [re.sub(r"\s+#.*$", "", line) for line in block.group(1).splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_readme_s_blocks_are_found_and_hold_commands():
    text = README.read_text()
    assert fenced_block_under(QUICK_START, text)[0] == "./run.sh"
    assert any("access_token.py" in line for line in fenced_block_under(TRY_IT, text))
    with pytest.raises(AssertionError):
        fenced_block_under("## No such heading", "## No such heading\nno block here\n")


def fresh_copy(destination: Path) -> Path:
    """The checkout's files as git sees them (tracked, and new ones not ignored), without anything ignored:
    no .venv, no node_modules, no local state. The .venv is linked to the checkout's."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (destination / ".venv").symlink_to(ROOT / ".venv")
    issuer_packages = ROOT / "deploy" / "issuer" / "node_modules"
    if issuer_packages.is_dir():  # else ./run.sh installs them, as on a new machine
        shutil.copytree(issuer_packages, destination / "deploy" / "issuer" / "node_modules", symlinks=True)
    return destination


class Environment:
    """Free ports, this test's own databases and vhost, and the issuer's keys in a temporary file."""

    def __init__(self, tmp: Path):
        run_id = f"shop_quickstart_{secrets.token_hex(4)}"
        self.databases, self.vhost = (f"{run_id}_orders", f"{run_id}_payments"), run_id
        ports = {name: free_port() for name in ("GATEWAY_PORT", "ORDER_SVC_PORT", "PAYMENT_SVC_PORT", "DEV_ISSUER_PORT",
                                                "GATEWAY_ADMIN_PORT", "ORDER_SVC_ADMIN_PORT", "PAYMENT_SVC_ADMIN_PORT")}
        self.gateway = f"127.0.0.1:{ports['GATEWAY_PORT']}"
        self.values = {
            **{name: str(port) for name, port in ports.items()},
            "ORDER_SVC_URL": f"http://127.0.0.1:{ports['ORDER_SVC_PORT']}",
            "PAYMENT_SVC_URL": f"http://127.0.0.1:{ports['PAYMENT_SVC_PORT']}",
            "ORDER_SVC_ADMIN_URL": f"http://127.0.0.1:{ports['ORDER_SVC_ADMIN_PORT']}",
            "PAYMENT_SVC_ADMIN_URL": f"http://127.0.0.1:{ports['PAYMENT_SVC_ADMIN_PORT']}",
            "AUTH_ISSUER": f"http://localhost:{ports['DEV_ISSUER_PORT']}",
            "DEV_ISSUER_KEYS": str(tmp / "issuer-keys.json"),
            "ORDER_DB_DSN": INFRA.dsn(self.databases[0]),
            "PAYMENT_DB_DSN": INFRA.dsn(self.databases[1]),
            "RABBITMQ_URL": INFRA.amqp_url(self.vhost),
        }

    def create(self):
        INFRA.add_vhost(self.vhost)

    def drop(self):
        for database in self.databases:
            INFRA.drop_database(database)
        INFRA.rabbitmqctl("delete_vhost", self.vhost)


def wait_until_ready(url: str, started: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until `url` answers 200: the gateway's `/ready` says so once each service is ready, with the issuer's keys
    loaded (a new user would see the processes' start-up lines settle, then try it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert started.poll() is None, f"./run.sh ended with {started.returncode}:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def run_try_it(commands: list[str], copy: Path, env: dict, gateway: str) -> list[dict]:
    """The "Try it" commands in one shell, as pasted into a terminal; the JSON answers, in order."""
    script = "set -e\n" + "\n".join(line.replace(PUBLIC_GATEWAY, gateway) + (" ; echo" if "curl" in line else "")
                                    for line in commands)
    done = subprocess.run(["bash", "-c", script], cwd=copy, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_the_readme_quick_start_starts_everything_an_order_is_paid_and_ctrl_c_stops_it(tmp_path):
    text = README.read_text()
    start = fenced_block_under(QUICK_START, text)[0]
    try_it = fenced_block_under(TRY_IT, text)
    copy = fresh_copy(tmp_path / "shop")
    environment = Environment(tmp_path)
    environment.create()
    env = {**os.environ, **environment.values}
    log = tmp_path / "run.log"
    try:
        with open(log, "w") as output:
            started = subprocess.Popen(["bash", "-c", start], cwd=copy, env=env, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_ready(f"http://127.0.0.1:{environment.values['GATEWAY_ADMIN_PORT']}/ready", started, log)
            answers = run_try_it(try_it, copy, env, environment.gateway)
            assert [answer["status"] for answer in answers] == ["Success"] * 3, answers
            account, topped_up, order = answers
            assert account["account"]["balance"] == 0
            assert topped_up["account"]["balance"] == 1000
            placed = order["order"]
            assert placed["status"] in ("NEW", "FINISHED"), order
            if placed["status"] == "NEW":  # not settled within the Prefer: wait: ask again, as the README says
                token = subprocess.run(["scripts/access_token.py", str(placed["user_id"])], cwd=copy, env=env,
                                       capture_output=True, text=True, check=True).stdout.strip()
                request = urllib.request.Request(f"http://{environment.gateway}/orders/{placed['order_id']}?wait=30",
                                                 headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(request, timeout=40) as answer:
                    placed = json.load(answer)["order"]
            assert placed["status"] == "FINISHED", placed
        finally:
            # Ctrl-C in the terminal: SIGINT to the whole foreground process group.
            os.killpg(started.pid, signal.SIGINT)
            try:
                started.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(started.pid, signal.SIGKILL)
                raise
        assert started.returncode is not None
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{environment.gateway}/health", timeout=2)
        leftovers = subprocess.run(["pgrep", "-s", str(started.pid)], capture_output=True, text=True).stdout
        assert not leftovers.strip(), f"processes left after Ctrl-C: {leftovers}"
    finally:
        environment.drop()
