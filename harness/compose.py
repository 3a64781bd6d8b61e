"""Run docker-compose.yml for real: Debian's docker-compose (v1) driving podman through its Docker-compatible
socket, on stand-in images built offline by scripts/podman-setup.sh.

Each `ComposeStack` is its own compose project (containers, network and volumes named after it) with the
gateway and the development token issuer published on free ports, so a run never meets another one or a natively
started gateway or issuer."""
import base64
import json
import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from common.runtime.config import read_env_file
from harness.client import call
from harness.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SOCKET = "/run/podman/podman.sock"
# The long-running containers, and the one-shots that provision each service's own credentials before they start
# (python -m ops.provision; they exit 0 and stay exited).
SERVICES = ("postgres", "rabbitmq", "issuer", "order", "payment", "gateway")
ONE_SHOTS = ("provision-postgres", "provision-rabbitmq")


def setup_machine():
    """Install podman + docker-compose and build (or reuse) the stand-in images."""
    subprocess.run([ROOT / "scripts" / "podman-setup.sh"], check=True, timeout=900)


def socket_answers(path=SOCKET):
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(path)
            return True
        except OSError:
            return False


class PodmanService:
    """`podman system service` on the Docker-compatible socket; started here only if none is listening."""

    def __init__(self):
        self.popen = None

    def start(self):
        if socket_answers():
            return self
        Path(SOCKET).parent.mkdir(parents=True, exist_ok=True)
        Path(SOCKET).unlink(missing_ok=True)  # left by a service that was killed: nobody answers on it
        self.popen = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{SOCKET}"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for attempt in Retrying(stop=stop_after_delay(30), wait=wait_fixed(0.2), reraise=True,
                                retry=retry_if_exception_type(AssertionError)):
            with attempt:
                assert socket_answers(), "podman system service did not open its socket"
        return self

    def stop(self):
        if self.popen is not None:
            self.popen.terminate()
            self.popen.wait(30)


def podman(*args, timeout=60):
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True, timeout=timeout).stdout


class HealthcheckPump(threading.Thread):
    """podman 4.3 runs healthchecks from systemd timers, which this machine does not have: run them here, every
    `interval` seconds, for each container of compose project `project` that is not healthy yet (a restarted one starts
    over). Checks run side by side and are cut off after CHECK_DEADLINE: one on a container being killed can
    hang."""

    CHECK_DEADLINE = 8

    def __init__(self, project, interval=1.0):
        super().__init__(name="healthchecks", daemon=True)
        self.project, self.interval = project, interval
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.wait(self.interval):
            try:
                lines = podman("ps", "--filter", f"label=com.docker.compose.project={self.project}",
                               "--format", "{{.Names}} {{.Status}}").splitlines()
            except subprocess.SubprocessError:
                continue
            checks = [subprocess.Popen(["podman", "healthcheck", "run", name], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
                      for name, _, status in (line.partition(" ") for line in lines) if "(healthy)" not in status]
            for check in checks:
                try:
                    check.wait(self.CHECK_DEADLINE)
                except subprocess.TimeoutExpired:
                    check.kill()
                    check.wait()

    def stop(self):
        self._stop_event.set()
        if self.is_alive():
            self.join(30)


def check_serving(url, headers):
    """Raises AssertionError unless the gateway at `url` passes a request with `headers` (an admin's token) to
    each service and it answers from its database: a healthy service (/health) may still lack the issuer's keys,
    and until it has them it refuses every token (a 401), e.g. just after a restart or while the issuer is down."""
    for path in ("/orders?user=1&limit=1", "/payments/1"):
        code, body = call(url, "GET", path, headers=headers, timeout=5)
        assert code in (200, 404), f"GET {path}: {code} {body}"


class IssuerClient:
    """Access tokens from a running development issuer (deploy/issuer/issuer.js), such as the compose file's
    `issuer` container: the client credentials grant at `url`/token as `user-<N>` or `shop-admin`, with the secret
    every client shares (DEV_ISSUER_SECRET). Each kind of token is kept and renewed a minute before it expires;
    safe to use from several threads.

        headers = issuer.headers(42, topup=True)       # {"Authorization": "Bearer ..."} of user 42, shop:topup
        headers = issuer.headers(admin=True)           # the operator, shop:admin
    """

    RENEW_BEFORE = 60

    def __init__(self, url, secret, timeout=10):
        self.url, self.secret, self.timeout = url.rstrip("/"), secret, timeout
        self._tokens = {}
        self._lock = threading.Lock()

    def token(self, user_id=None, *, topup=False, admin=False):
        if admin == (user_id is not None) or (admin and topup):
            raise ValueError("a user id (optionally topup) or admin")
        key = (user_id, topup, admin)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is None or time.time() >= cached[1] - self.RENEW_BEFORE:
                self._tokens[key] = cached = self._request(user_id, topup, admin)
            return cached[0]

    def headers(self, user_id=None, **kind):
        return {"Authorization": f"Bearer {self.token(user_id, **kind)}"}

    def _request(self, user_id, topup, admin):
        client = "shop-admin" if admin else f"user-{user_id}"
        form = {"grant_type": "client_credentials"}
        if admin or topup:
            form["scope"] = "shop:admin" if admin else "shop:topup"
        request = urllib.request.Request(
            self.url + "/token", data=urllib.parse.urlencode(form).encode(),
            headers={"Authorization": "Basic " + base64.b64encode(f"{client}:{self.secret}".encode()).decode()})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"the issuer at {self.url} refused a token for {client} ({error.code}): "
                               f"{error.read()[:500]!r}") from None
        return body["access_token"], time.time() + body["expires_in"]


class ComposeStack:
    """docker-compose.yml (plus `extra_files`) as one fresh compose project; `.url` reaches its gateway, `.issuer`
    gets tokens from its development issuer (published at `.issuer_url`)."""

    def __init__(self, extra_files=(), extra_env=None):
        self.project = f"shop_compose_{secrets.token_hex(4)}"
        self.host_port, self.issuer_port = free_port(), free_port()
        self.files = [COMPOSE_FILE, *extra_files]
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{SOCKET}", "GATEWAY_HOST_PORT": str(self.host_port),
                    "ISSUER_HOST_PORT": str(self.issuer_port), **(extra_env or {})}
        self.settings = {**read_env_file(), **self.env}
        self.issuer = IssuerClient(self.issuer_url, self.settings["DEV_ISSUER_SECRET"])
        self._pump = HealthcheckPump(self.project)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.host_port}"

    @property
    def issuer_url(self):
        """Where clients on this machine reach the issuer (the compose file publishes it on loopback)."""
        return f"http://127.0.0.1:{self.issuer_port}"

    def compose(self, *args, timeout=120):
        """Run `docker-compose <args>` on this project; raises `CalledProcessError` with its output."""
        command = ["docker-compose", "--project-name", self.project, "--project-directory", ROOT]
        for path in self.files:
            command += ["--file", path]
        done = subprocess.run([*command, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if done.returncode:
            raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
        return done.stdout

    def container(self, service):
        return f"{self.project}_{service}_1"

    def inspect(self, service):
        return json.loads(podman("inspect", self.container(service)))[0]

    def exec(self, service, *args, env=None, check=True, timeout=60):
        """Run `args` in a service's container (`env`: variables for the command only); the finished process."""
        options = [f"--env={key}={value}" for key, value in (env or {}).items()]
        return subprocess.run(["podman", "exec", *options, self.container(service), *args], check=check,
                              capture_output=True, text=True, timeout=timeout)

    def health(self, service):
        return self.inspect(service)["State"]["Health"]["Status"]

    def up(self, timeout=300):
        self.compose("build", timeout=900)
        self._pump.start()
        # `up` itself waits for every `depends_on: service_healthy`.
        self.compose("up", "--detach", "--no-build", timeout=timeout)
        self.wait_healthy(*SERVICES)
        return self

    def wait_healthy(self, *services, timeout=120):
        """Until `services` are healthy and both services take tokens through the gateway (`check_serving`)."""
        for attempt in Retrying(stop=stop_after_delay(timeout), wait=wait_fixed(0.5), reraise=True,
                                retry=retry_if_exception_type((AssertionError, OSError))):
            with attempt:
                states = {s: self.health(s) for s in services}
                assert set(states.values()) == {"healthy"}, f"not healthy yet: {states}\n{self.logs()}"
                check_serving(self.url, self.issuer.headers(admin=True))

    def logs(self, tail=40):
        try:
            return self.compose("logs", "--no-color", "--tail", str(tail), timeout=60)
        except subprocess.SubprocessError as exc:
            return f"(no logs: {exc})"

    def down(self):
        """Remove containers, network and volumes; the project must leave nothing behind."""
        self._pump.stop()
        self.compose("down", "--volumes", "--timeout", "10", timeout=180)
        left = podman("ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}")
        volumes = podman("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}")
        assert not left.strip() and not volumes.strip(), f"left behind: {left} {volumes}"
