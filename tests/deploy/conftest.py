import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
LOCAL_PROMTOOL = ROOT / "tools" / "prometheus" / "promtool"


@pytest.fixture(scope="session")
def promtool():
    """The promtool on PATH, else the one `scripts/install-tools.sh promtool` puts in tools/ (installed now if
    missing). Skips, saying why, only if it cannot be installed."""
    found = shutil.which("promtool")
    if found:
        return found
    if not LOCAL_PROMTOOL.exists():
        done = subprocess.run([ROOT / "scripts" / "install-tools.sh", "promtool"], capture_output=True, text=True,
                              timeout=300)
        if done.returncode:
            pytest.skip(f"promtool absent and scripts/install-tools.sh promtool failed: {done.stderr.strip()}")
    return str(LOCAL_PROMTOOL)
