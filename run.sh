#!/usr/bin/env bash
# Set up and run the whole system locally in the foreground: gateway (8080), Order Service (8081),
# Payments Service (8082), and, with AUTH_MODE=jwt and DEV_ISSUER=1 (.env's defaults), the development token
# issuer (8083; deploy/issuer). Ctrl-C stops them all.
# First it checks the PostgreSQL and RabbitMQ that .env (or the environment) names. Missing ones on this
# machine are installed from Debian/Ubuntu packages and started when it may (as root, or with --install;
# never with --no-install); otherwise it stops at once with the commands to run (scripts/preflight.py).
# Usage: ./run.sh [--install | --no-install]
set -euo pipefail
cd "$(dirname "$0")"
python3 scripts/preflight.py "$@"
scripts/setup.sh
setting() { .venv/bin/python -c 'import os, sys; from common.runtime.config import read_env_file
print({**read_env_file(), **os.environ}.get(sys.argv[1], ""))' "$1"; }
pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait; }
trap stop INT TERM
if [ "$(setting AUTH_MODE)" = jwt ] && [ "$(setting DEV_ISSUER)" = 1 ]; then
    scripts/install-tools.sh issuer
    node deploy/issuer/issuer.js & pids+=($!)
fi
.venv/bin/python -m order_svc & pids+=($!)
.venv/bin/python -m payment_svc & pids+=($!)
.venv/bin/python gateway.py & pids+=($!)
wait -n || true
stop
