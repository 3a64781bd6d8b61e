#!/usr/bin/env bash
# Set up and run the whole system locally in the foreground: gateway (8080), Order Service (8081),
# Payments Service (8082). Needs PostgreSQL and RabbitMQ (see .env). Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
pids=()
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait; }
trap stop INT TERM
.venv/bin/python -m order_svc & pids+=($!)
.venv/bin/python -m payment_svc & pids+=($!)
.venv/bin/python gateway.py & pids+=($!)
wait -n || true
stop
