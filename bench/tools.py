"""The external tools the benchmark drives: wrk (HTTP load), pgbench (database baseline), nginx (proxy
baseline). They are installed on first use with apt-get; a tool that cannot be had makes its figure n/a."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.progress import say

HERE = Path(__file__).resolve().parent
APT_PACKAGES = ("wrk", "nginx-light", "tcpdump")


class ToolMissing(Exception):
    """A tool the figure needs is not installed and could not be installed."""


def find(name):
    """Path of an executable, also in this venv, where root's PATH would look (/usr/sbin) or PostgreSQL
    keeps it."""
    postgresql = sorted(map(str, Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)
    extra = [str(Path(sys.executable).parent), "/usr/sbin", "/sbin", *postgresql]
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(extra))


def ensure_installed():
    """Install wrk, nginx-light and tcpdump if missing (quietly; failure leaves the affected figures n/a)."""
    if find("wrk") and find("nginx") and find("tcpdump"):
        return
    say(f"installing {' '.join(APT_PACKAGES)} with apt-get")
    # RUNLEVEL=1 keeps Debian's package scripts from starting a system-wide nginx on port 80.
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}
    install = ["apt-get", "install", "-y", "-q", *APT_PACKAGES]
    for command in (install, ["apt-get", "update", "-q"], install):
        try:
            done = subprocess.run(command, env=env, capture_output=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            say(f"  {command[1]} failed: {exc!r}")
            return
        if command is install and done.returncode == 0:
            return
    say("  could not install them; the figures that need them will be n/a")


@dataclass
class WrkResult:
    requests: int
    seconds: float
    status_errors: int
    socket_errors: int
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float = 0.0
    over_2s: int = 0  # answers that took longer than 2 s (from wrk's percentiles)
    timeouts: int = 0  # requests wrk gave up on (its --timeout)
    status_503: int = 0  # counted only with count_503=True

    @property
    def ok_per_second(self):
        return (self.requests - self.status_errors) / self.seconds


def wrk(url, connections, seconds, threads=2, post=False, users=1000, limit_per_thread=0, until=None,
        count_503=False, tokens_file=""):
    """Run wrk with bench/wrk.lua; raises ToolMissing if wrk is not installed. `tokens_file`: bearer tokens, the
    one of user u on line u (a GET sends the first).

    With `limit_per_thread` each wrk thread stops sending after that many responses, but wrk itself runs
    out its duration: `until()` is then polled and wrk interrupted (it still reports) once it is true."""
    binary = find("wrk")
    if not binary:
        raise ToolMissing("wrk")
    env = {**os.environ, "BENCH_POST": "1" if post else "0", "BENCH_USERS": str(users),
           "BENCH_LIMIT": str(limit_per_thread), "BENCH_COUNT_503": "1" if count_503 else "0",
           "BENCH_TOKENS": str(tokens_file)}
    command = [binary, "-t", str(threads), "-c", str(max(connections, threads)), "-d", f"{seconds}s",
               "--timeout", "10s", "-s", str(HERE / "wrk.lua"), url]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if until is not None:
        while process.poll() is None and not until():
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=seconds + 120)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command, out, err)
    data = json.loads(next(line for line in out.splitlines() if line.startswith("BENCH "))[6:])
    return WrkResult(data["requests"], data["duration_us"] / 1e6, data["status_errors"], data["socket_errors"],
                     data["latency_p50_us"] / 1000, data["latency_p99_us"] / 1000, data["latency_max_us"] / 1000,
                     data["over_2s"], data["timeouts"], data["status_503"])


def pgbench(dsn, clients, seconds):
    """Transactions per second of bench/pgbench_order.sql against `dsn`; raises ToolMissing."""
    binary = find("pgbench")
    if not binary:
        raise ToolMissing("pgbench")
    command = [binary, "-n", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(max(int(seconds), 1)),
               "-f", str(HERE / "pgbench_order.sql"), dsn]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 120).stdout
    line = next(line for line in out.splitlines() if line.startswith("tps = "))
    return float(line.split()[2])


@contextmanager
def nginx_proxy(listen_port, backend):
    """nginx on `listen_port` proxying to `backend` ("host:port") like the gateway; raises ToolMissing."""
    binary = find("nginx")
    if not binary:
        raise ToolMissing("nginx")
    prefix = tempfile.mkdtemp(prefix="shop_bench_nginx_")
    conf = Path(prefix, "nginx.conf")
    conf.write_text((HERE / "nginx.conf").read_text().format(prefix=prefix, listen=listen_port, backend=backend))
    process = subprocess.Popen([binary, "-p", prefix, "-c", str(conf), "-e", f"{prefix}/error.log"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{listen_port}"
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(prefix, ignore_errors=True)
