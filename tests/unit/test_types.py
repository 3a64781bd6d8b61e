"""mypy, strict as mypy.ini configures it, passes over the product (common/, the services, proxy/, gateway.py), so
an annotation is checked and a `type: ignore` marks a real exception."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "mypy.ini")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
