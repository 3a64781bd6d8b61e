"""The connection cap follows the file limit: a process raises its soft limit, and caps below what it may open."""
import subprocess
import sys

from harness.stack import ROOT

# In a child process: lowering the hard limit cannot be undone.
PROBE = """
import resource
from common.web.http_server import RESERVED_FILES, connection_cap
resource.setrlimit(resource.RLIMIT_NOFILE, (512, {hard}))
print(connection_cap({wanted}), resource.getrlimit(resource.RLIMIT_NOFILE)[0], RESERVED_FILES)
"""


def cap_and_soft_limit(wanted, hard):
    out = subprocess.run([sys.executable, "-c", PROBE.format(wanted=wanted, hard=hard)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return tuple(map(int, out.split()))


def test_the_soft_file_limit_is_raised_for_the_connection_cap():
    cap, soft, reserved = cap_and_soft_limit(wanted=1000, hard=4096)
    assert (cap, soft) == (1000, 1000 + reserved)


def test_the_cap_is_lowered_to_what_the_hard_file_limit_allows():
    cap, soft, reserved = cap_and_soft_limit(wanted=4000, hard=1024)
    assert (cap, soft) == (1024 - reserved, 1024)
