#!/usr/bin/env bash
# Mutation testing of the core (docs/testing.md, "Mutation testing"): mutmut changes one thing at a time in the modules
# setup.cfg's [mutmut] section lists (only_mutate) and runs the unit and integration tests that reach it; a
# mutant no test notices "survived". Slow (tens of minutes on 2 cores): outside CI.
#
#   scripts/mutation.sh                      every module listed, then the score per module
#   scripts/mutation.sh 'common.domain.validation*' only the mutants whose names match (mutmut's own globs)
#   scripts/mutation.sh --fresh              forget earlier results (after tests changed) and run again
#
# Results stay in mutants/ (git-ignored): `.venv/bin/mutmut show NAME` prints one mutant's diff,
# `.venv/bin/mutmut results` lists the survivors.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
if [[ "${1:-}" == "--fresh" ]]; then
    rm -rf mutants
    shift
fi
# The tests use their own databases and vhost on the shared servers (harness.infra), like ./test.sh.
.venv/bin/mutmut run --max-children "${MUTATION_CHILDREN:-2}" "$@" || true
.venv/bin/python scripts/mutation_scores.py
