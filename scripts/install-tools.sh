#!/usr/bin/env bash
# Install the Node tools the tests use (newman, pinned with every transitive package in
# tools/package-lock.json) into tools/node_modules. Idempotent, quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/../tools"
stamp=node_modules/.lock.sha
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
    echo "$want" > "$stamp"
fi
