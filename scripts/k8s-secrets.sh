#!/usr/bin/env bash
# The credentials of the Kubernetes overlays, as the files their secretGenerators read: for each overlay,
# deploy/kubernetes/overlays/OVERLAY/secrets/ (ignored by git, mode 700) gets one file per Secret, mode 600:
#
#   shop-order-db.env      username=shop-order    PostgreSQL role of the Order Service (owner of `orders`)
#   shop-payment-db.env    username=shop-payment  PostgreSQL role of the Payments Service (owner of `payments`)
#   shop-order-amqp.env    username=shop-order    RabbitMQ user of the Order Service
#   shop-payment-amqp.env  username=shop-payment  RabbitMQ user of the Payments Service
#   shop-operator-amqp.env username=shop-operator RabbitMQ user of the operators (dead letters: list, replay)
#
# each with `password=` 64 random hex digits (256 bits; URL-safe, as the DSNs and AMQP URLs embed them).
#
#   scripts/k8s-secrets.sh [--dir DIR] [--rotate] [OVERLAY ...]     (default overlays: dev ha)
#
# Existing files are kept (running it again changes nothing) unless --rotate, which writes new passwords; then
# `kubectl apply -k deploy/kubernetes/overlays/OVERLAY` (CloudNativePG and the Topology Operator apply them to the
# roles and users) and `kubectl -n NAMESPACE rollout restart deploy/order deploy/payment` (the pods read them at
# start; a dead-letters Job made after the apply gets the operator's new password). --dir: another copy of
# deploy/kubernetes (the tests render one in a temporary directory).
# Nothing is printed but the files' names: the passwords stay in the files (and, once applied, in the Secrets).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$ROOT/deploy/kubernetes
ROTATE=0
OVERLAYS=()
while [ $# -gt 0 ]; do
    case $1 in
        --dir) DIR=$2; shift 2 ;;
        --rotate) ROTATE=1; shift ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
        *) OVERLAYS+=("$1"); shift ;;
    esac
done
[ ${#OVERLAYS[@]} -gt 0 ] || OVERLAYS=(dev ha)

random_password() {
    if command -v openssl >/dev/null; then
        openssl rand -hex 32
    else
        od -vAn -N32 -tx1 /dev/urandom | tr -d ' \n'
        echo
    fi
}

umask 077
for overlay in "${OVERLAYS[@]}"; do
    target=$DIR/overlays/$overlay
    if [ ! -f "$target/kustomization.yaml" ]; then
        echo "no overlay $overlay in $DIR/overlays" >&2
        exit 2
    fi
    mkdir -p "$target/secrets"
    chmod 700 "$target/secrets"
    for entry in shop-order-db:shop-order shop-payment-db:shop-payment shop-order-amqp:shop-order \
                 shop-payment-amqp:shop-payment shop-operator-amqp:shop-operator; do
        file=$target/secrets/${entry%%:*}.env
        if [ -f "$file" ] && [ "$ROTATE" = 0 ]; then
            echo "kept    $file"
            continue
        fi
        printf 'username=%s\npassword=%s\n' "${entry#*:}" "$(random_password)" > "$file.new"
        mv "$file.new" "$file"
        echo "written $file"
    done
done
