#!/usr/bin/env bash
# The benchmark in one command: set up .venv, install wrk/nginx-light if missing, run `python -m bench`.
# Arguments go to it, e.g. bench/run.sh --smoke, bench/run.sh --only 1,4
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/pip install --quiet -r bench/requirements.txt
exec .venv/bin/python -m bench "$@"
