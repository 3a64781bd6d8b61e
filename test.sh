#!/usr/bin/env bash
# Run the test suite against the local PostgreSQL and RabbitMQ (each run uses its own databases and vhost).
# Extra arguments go to pytest, e.g. ./test.sh tests/unit -q
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
