#!/usr/bin/env bash
# Install the tools the tests use, into tools/ (the development issuer's packages into deploy/issuer/).
# Idempotent, quick when nothing changed.
#   scripts/install-tools.sh            all of them
#   scripts/install-tools.sh newman     newman (pinned with every transitive package in tools/package-lock.json)
#   scripts/install-tools.sh issuer     the development OpenID Connect issuer's packages (oidc-provider, pinned
#                                       likewise in deploy/issuer/package-lock.json) into deploy/issuer/node_modules
#   scripts/install-tools.sh promtool   promtool and the prometheus server binary, from Debian's `prometheus`
#                                       package (pinned version below), into tools/prometheus/
set -euo pipefail
tools="$(cd "$(dirname "$0")/../tools" && pwd)"
issuer="$(cd "$(dirname "$0")/../deploy/issuer" && pwd)"

# npm ci in directory $1 unless its node_modules was installed from the package-lock.json it has now.
npm_ci() (
    cd "$1"
    local stamp=node_modules/.lock.sha want
    want=$(sha256sum package-lock.json | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        npm ci --no-audit --no-fund --loglevel=error >/dev/null
        echo "$want" > "$stamp"
    fi
)
install_newman() { npm_ci "$tools"; }
install_issuer() { npm_ci "$issuer"; }

# The two binaries alone, unpacked from the .deb: installing the package would also install (and, on a machine
# with an init system, start) a Prometheus server as a system service; the tests start their own on a free
# port and stop it. `apt-get download` needs no root.
PROMETHEUS_DEB_VERSION=2.42.0+ds-5+deb12u1
install_promtool() {
    local dir="$tools/prometheus" stamp="$tools/prometheus/.version"
    [ "$(cat "$stamp" 2>/dev/null)" = "$PROMETHEUS_DEB_VERSION" ] && [ -x "$dir/promtool" ] && [ -x "$dir/prometheus" ] \
        && return
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    (cd "$work" && apt-get download -q "prometheus=$PROMETHEUS_DEB_VERSION" >/dev/null 2>&1) || {
        echo "install-tools: apt-get download prometheus=$PROMETHEUS_DEB_VERSION failed (run apt-get update?)" >&2
        return 1
    }
    dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
    mkdir -p "$dir"
    install -m 0755 "$work/root/usr/bin/promtool" "$work/root/usr/bin/prometheus" "$dir/"
    echo "$PROMETHEUS_DEB_VERSION" > "$stamp"
}

case "${1:-all}" in
    newman) install_newman ;;
    issuer) install_issuer ;;
    promtool) install_promtool ;;
    # Without an argument a promtool that cannot be fetched is a warning: the newman tests need only newman.
    all) install_newman; install_issuer; install_promtool || echo "install-tools: promtool not installed" >&2 ;;
    *) echo "usage: $0 [newman|issuer|promtool|all]" >&2; exit 2 ;;
esac
