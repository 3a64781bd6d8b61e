import shutil
import subprocess
from pathlib import Path

import pytest

from harness.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
LOCAL_TOOLS = ROOT / "tools" / "prometheus"


def prometheus_tool(name):
    """`name` (promtool, prometheus) from the PATH, else from tools/prometheus/, installed there now by
    `scripts/install-tools.sh promtool` if missing. Skips, saying why, only if it cannot be installed."""
    found = shutil.which(name)
    if found:
        return found
    if not (LOCAL_TOOLS / name).exists():
        done = subprocess.run([ROOT / "scripts" / "install-tools.sh", "promtool"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode:
            pytest.skip(f"{name} absent and scripts/install-tools.sh promtool failed: {done.stderr.strip()}")
    return str(LOCAL_TOOLS / name)


@pytest.fixture(scope="session")
def promtool():
    return prometheus_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_binary():
    return prometheus_tool("prometheus")


@pytest.fixture(scope="session")
def stack():
    """The three processes, real, shared by the deploy tests (which only read from them and add dead letters)."""
    with Stack(prefix="shop_deploy") as running:
        yield running
        for process in running.processes.values():
            assert "Traceback" not in process.log(), process.log()[-5000:]
