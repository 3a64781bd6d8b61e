"""Container healthcheck: `python -m ops.healthcheck URL` exits 0 if URL answers 2xx, else 1.

The slim image has no curl; this keeps docker-compose.yml's checks free of inline Python."""
import sys
import urllib.request


def main(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if 200 <= response.status < 300 else 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
