"""Progress lines on stderr while the benchmark runs (the table itself goes to stdout)."""
import sys
import time

_START = time.monotonic()


def say(message):
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def wait(seconds, label, every=5.0):
    """Sleep `seconds`, saying how far along it is every `every` seconds."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(every, left))
        say(f"  {label}: {seconds - max(end - time.monotonic(), 0):.0f}/{seconds:.0f} s")
