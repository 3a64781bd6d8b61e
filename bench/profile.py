"""py-spy on the services while a figure runs (`python -m bench --profile`): which functions burn the CPU.

py-spy samples from outside the process (no code changes, little overhead) and is installed for the
benchmark only (bench/requirements.txt), never for the services."""
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from bench.tools import ToolMissing, find

RATE = 100  # samples per second
OWN_CODE = ("common/", "order_svc/", "payment_svc/", "gateway.py")


class Profiler:
    """`py-spy record` on each named process for `seconds`, in the background; `report()` summarises."""

    def __init__(self, processes, seconds):
        binary = find("py-spy")
        if not binary:
            raise ToolMissing("py-spy (bench/run.sh installs it)")
        self.dir = Path(tempfile.mkdtemp(prefix="shop_bench_pyspy_"))
        self.seconds = seconds
        self.runs = {name: subprocess.Popen(
            [binary, "record", "--nonblocking", "-r", str(RATE), "-d", str(int(seconds)), "-f", "raw",
             "-o", str(self.dir / f"{name}.txt"), "-p", str(process.popen.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for name, process in processes.items()}

    def report(self, top=8):
        lines = []
        for name, run in self.runs.items():
            run.wait(self.seconds + 60)
            path = self.dir / f"{name}.txt"
            if path.exists():
                lines += summarise(name, path.read_text(), self.seconds, top)
        return "\n".join(lines)


def frame_name(frame):
    """'handle (common/db/database.py:45)' -> 'common/db/database.py:handle', paths cut to the repo or site-packages."""
    function, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3", "/wt-bench/", "/work/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{function}"


def summarise(name, raw, seconds, top):
    own, inclusive, total = Counter(), Counter(), 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [frame_name(f) for f in stack.split(";")[1:]]  # the first frame is the thread
        if not frames:
            continue
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            if frame.startswith(OWN_CODE):
                inclusive[frame] += int(count)
    busy = total / (RATE * seconds)
    out = [f"{name}: busy {busy:.0%} of one core; by own time:"]
    out += [f"  {n / total:5.1%}  {f}" for f, n in own.most_common(top)]
    out += ["  project functions, including what they call:"]
    out += [f"  {n / total:5.1%}  {f}" for f, n in inclusive.most_common(top)]
    return out
