#!/usr/bin/env bash
# A private PostgreSQL cluster and RabbitMQ node for running the chaos runner on a shared machine, where
# restarting the real `15 main` (5432) and default node (5672) would disturb everyone else. CI does not need it.
#
#   scripts/private-brokers.sh start     create (first time) and start both; prints the variables to export
#   scripts/private-brokers.sh env       just print them:  eval "$(scripts/private-brokers.sh env)"
#   scripts/private-brokers.sh stop      stop both (data is kept)
#   scripts/private-brokers.sh destroy   stop and delete both
#
# Ports and names can be changed with the variables below (CHAOS_PG_PORT=...).
set -euo pipefail
# shellcheck source=scripts/rabbitmq-node.sh
. "$(dirname "$0")/rabbitmq-node.sh"

PG_VERSION=${PG_VERSION:-15}
PG_CLUSTER=${CHAOS_PG_CLUSTER:-chaos}
PG_PORT=${CHAOS_PG_PORT:-5433}
RABBIT_NAME=${CHAOS_RABBIT_NAME:-chaos}
AMQP_PORT=${CHAOS_AMQP_PORT:-5673}
DIST_PORT=${CHAOS_DIST_PORT:-25673}
BASE=${CHAOS_BASE:-/var/tmp/shop-chaos-rabbitmq}
# RabbitMQ's scripts read every node setting from this file (RABBITMQ_CONF_ENV_FILE), so rabbitmqctl and
# rabbitmq-server pointed at it address the private node and nothing else.
RABBIT_ENV_FILE=$BASE/rabbitmq-env.conf

print_env() {
    cat <<END
export SHOP_TEST_PG='postgresql://postgres@127.0.0.1:$PG_PORT/postgres'
export SHOP_TEST_PG_CLUSTER='$PG_VERSION $PG_CLUSTER'
export SHOP_TEST_AMQP='amqp://guest:guest@127.0.0.1:$AMQP_PORT/'
export SHOP_TEST_RABBITMQ_ENV='$RABBIT_ENV_FILE'
END
}

pg_start() {
    if ! pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$PG_VERSION $PG_CLUSTER"; then
        pg_createcluster "$PG_VERSION" "$PG_CLUSTER" -p "$PG_PORT" >/dev/null
        hba=/etc/postgresql/$PG_VERSION/$PG_CLUSTER/pg_hba.conf
        printf 'local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n' > "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" status >/dev/null 2>&1 ||
        pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" start
    for _ in $(seq 60); do pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && return; sleep 0.5; done
    echo "PostgreSQL $PG_VERSION/$PG_CLUSTER did not come up" >&2; exit 1
}

rabbit_setup() {
    write_node_files "$BASE" "$RABBIT_NAME" "$AMQP_PORT" "$DIST_PORT" "$RABBIT_ENV_FILE"
}

rabbitctl() {
    RABBITMQ_CONF_ENV_FILE=$RABBIT_ENV_FILE rabbitmqctl "$@"
}

rabbit_start() {
    rabbit_setup
    if ! rabbitctl -q await_startup --timeout 3 >/dev/null 2>&1; then
        # setsid: the node must outlive the shell (and process group) that started it.
        rabbitctl start_app >/dev/null 2>&1 ||
            RABBITMQ_CONF_ENV_FILE=$RABBIT_ENV_FILE setsid rabbitmq-server -detached
        for _ in $(seq 120); do rabbitctl -q await_startup --timeout 5 >/dev/null 2>&1 && return; sleep 1; done
        echo "RabbitMQ node $RABBIT_NAME@localhost did not come up; see $BASE/log" >&2; exit 1
    fi
}

case "${1:-start}" in
    start) pg_start; rabbit_start; print_env ;;
    env) print_env ;;
    stop)
        rabbitctl -q stop 2>/dev/null || true
        pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" stop 2>/dev/null || true ;;
    destroy)
        rabbitctl -q stop 2>/dev/null || true
        pg_dropcluster --stop "$PG_VERSION" "$PG_CLUSTER" 2>/dev/null || true
        rm -rf "$BASE" ;;
    *) echo "usage: $0 start|env|stop|destroy" >&2; exit 2 ;;
esac
