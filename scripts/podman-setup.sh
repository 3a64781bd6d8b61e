#!/usr/bin/env bash
# Prepare this machine to run docker-compose.yml under podman (no Docker engine, no container registry):
# install podman + Debian's docker-compose v1, fix podman 4.3's rlimit default, and build offline stand-ins
# for the base images the compose file's containers need (python:3.11-slim from debootstrap; postgres:15,
# rabbitmq:3.10 and node:18-bookworm-slim, the development issuer's base, from it). Images already built from
# the same files are kept, so a second run takes seconds.
# Needs root. Usage: scripts/podman-setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
STANDINS=scripts/standins
BASE_IMAGE=docker.io/library/python:3.11-slim
# Debian bookworm's Python is 3.11, like the official image the Dockerfile names.
DEBOOTSTRAP_ARGS=(--variant=minbase --include=python3,python3-venv,ca-certificates bookworm)

log() { echo "podman-setup: $*" >&2; }

install_packages() {
    if command -v podman >/dev/null && command -v docker-compose >/dev/null && command -v debootstrap >/dev/null \
            && command -v runc >/dev/null; then
        return
    fi
    log "installing podman, runc, docker-compose, debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc docker-compose debootstrap >/dev/null
}

configure_podman() {
    # podman 4.3 copies the host's rlimits into every container, which fails here with "error setting rlimit
    # type 7: operation not permitted" unless the default list is empty; and crun refuses this machine's
    # hybrid cgroup v1/v2 mounts ("cgroups in hybrid mode not supported"), runc copes. A drop-in file leaves
    # the machine's own containers.conf alone.
    mkdir -p /etc/containers/containers.conf.d
    cat > /etc/containers/containers.conf.d/50-shop.conf <<'CONF'
[containers]
default_ulimits = []

[engine]
runtime = "runc"
CONF
}

# Hash of what an image is built from; an image labelled with another hash is rebuilt.
inputs_hash() { cat "$@" | sha256sum | cut -c1-16; }

# True if `image` is the stand-in built from `hash`, or a real image (no stand-in label) that must be kept.
image_is_current() {
    local image=$1 hash=$2 label
    label=$(podman image inspect --format '{{index .Labels "shop.standin"}}' "$image" 2>/dev/null) || return 1
    [ "$label" = "$hash" ] || [ -z "$label" ] || [ "$label" = "<no value>" ]
}

# Machines of this kind reach PyPI through a TLS-inspecting proxy whose CA only the host trusts (in
# /usr/local/share/ca-certificates, and pip's `cert` setting). The stand-in base trusts what the host trusts,
# so `pip install` in the Dockerfile works here unchanged; on a machine without local CAs this does nothing.
trust_host_cas() {
    local rootfs=$1
    if ! compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        return
    fi
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$rootfs/etc/pip.conf"
}

build_base() {
    local hash
    hash=$( (echo "${DEBOOTSTRAP_ARGS[*]}"; cat /usr/local/share/ca-certificates/*.crt 2>/dev/null) | inputs_hash)
    if image_is_current "$BASE_IMAGE" "$hash"; then
        return
    fi
    log "building $BASE_IMAGE stand-in with debootstrap"
    local rootfs
    rootfs=$(mktemp -d /var/tmp/shop-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' RETURN
    debootstrap "${DEBOOTSTRAP_ARGS[@]}" "$rootfs" http://deb.debian.org/debian >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    trust_host_cas "$rootfs"
    tar -C "$rootfs" -c . | podman import --change "LABEL shop.standin=$hash" --change 'CMD ["python3"]' \
        - "$BASE_IMAGE" >/dev/null
}

build_standin() {
    local image=$1 name=$2 hash inputs
    # The base image's id is part of the hash: a rebuilt base rebuilds the stand-ins on it.
    inputs=("$STANDINS/$name.Containerfile")
    if [ -e "$STANDINS/$name-entrypoint.sh" ]; then
        inputs+=("$STANDINS/$name-entrypoint.sh")
    fi
    hash=$( (podman image inspect --format '{{.Id}}' "$BASE_IMAGE"; cat "${inputs[@]}") | inputs_hash)
    if image_is_current "$image" "$hash"; then
        return
    fi
    log "building $image stand-in"
    # Host network: the build's apt-get reaches the Debian mirror the way the host does.
    podman build --quiet --network host --label "shop.standin=$hash" -t "$image" \
        -f "$STANDINS/$name.Containerfile" "$STANDINS" >/dev/null
}

install_packages
configure_podman
build_base
build_standin docker.io/library/postgres:15 postgres
build_standin docker.io/library/rabbitmq:3.10 rabbitmq
build_standin docker.io/library/node:18-bookworm-slim node
# Stand-ins replaced by a rebuild are left untagged; drop them (only ours carry the label).
podman image prune --force --filter label=shop.standin >/dev/null
log "ready: $(podman --version), $(docker-compose --version)"
