#!/usr/bin/env bash
# A PostgreSQL 15 primary and a synchronous standby under pg_auto_failover 2.0 (Debian's
# postgresql-15-auto-failover + pg-auto-failover-cli), all on this machine, for tests and trials:
# a monitor (which decides failovers) and two data nodes, each run by its own `pg_autoctl` keeper as postgres.
#
#   scripts/pg-ha.sh start     install the packages if missing, create (first time) and start all three;
#                              prints the variables to export
#   scripts/pg-ha.sh env       just print them:  eval "$(scripts/pg-ha.sh env)"
#   scripts/pg-ha.sh status    the monitor's view: which node is primary, which is secondary, replication state
#   scripts/pg-ha.sh stop      stop the keepers and their PostgreSQL servers (data is kept)
#   scripts/pg-ha.sh destroy   stop and delete everything under the base directory
#   scripts/pg-ha.sh roles     one line per data node: name port reported-state assigned-state
#   scripts/pg-ha.sh kill-node NAME   SIGKILL a data node's keeper and postmaster (the machine is lost)
#   scripts/pg-ha.sh run-node NAME    start a node's keeper again (after kill-node or stop)
#
# Never touches the machine's `15 main` cluster (5432): own ports and data directories below, overridable:
#   PG_HA_BASE (/var/tmp/shop-pg-ha), PG_HA_MONITOR_PORT (5440), PG_HA_NODE1_PORT (5441), PG_HA_NODE2_PORT (5442),
#   PG_HA_FAST (1): monitor health checks tuned for a failover within seconds on one machine (0 = the defaults).
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
BASE=${PG_HA_BASE:-/var/tmp/shop-pg-ha}
# The ports chosen when the formation was created, so that every later command addresses the same one.
SETTINGS=$BASE/ports.env
if [ -f "$SETTINGS" ]; then . "$SETTINGS"; fi
MONITOR_PORT=${PG_HA_MONITOR_PORT:-5440}
NODE1_PORT=${PG_HA_NODE1_PORT:-5441}
NODE2_PORT=${PG_HA_NODE2_PORT:-5442}
FAST=${PG_HA_FAST:-1}
MONITOR_URI="postgres://autoctl_node@127.0.0.1:$MONITOR_PORT/pg_auto_failover?sslmode=disable"
NODES=(node1 node2)

node_port() { case $1 in node1) echo "$NODE1_PORT" ;; node2) echo "$NODE2_PORT" ;; monitor) echo "$MONITOR_PORT" ;;
                          *) echo "unknown node '$1' (node1, node2 or monitor)" >&2; exit 2 ;; esac; }

print_env() {
    local hosts="127.0.0.1:$NODE1_PORT,127.0.0.1:$NODE2_PORT"
    cat <<END
# The services (one database each; they create it on the primary at start-up):
export ORDER_DB_DSN='postgresql://postgres@$hosts/orders?target_session_attrs=read-write'
export PAYMENT_DB_DSN='postgresql://postgres@$hosts/payments?target_session_attrs=read-write'
# The test harness (harness/infra.py):
export SHOP_TEST_PG='postgresql://postgres@$hosts/postgres?target_session_attrs=read-write'
export SHOP_TEST_PG_HA='$BASE'
END
}

# pg_autoctl keeps its configuration and state under XDG directories: pointing them into $BASE keeps this
# formation apart from any other and lets `destroy` remove every trace of it.
as_postgres() {
    runuser -u postgres -- env PATH="$PG_BIN:$PATH" XDG_CONFIG_HOME="$BASE/config" XDG_DATA_HOME="$BASE/share" \
        XDG_RUNTIME_DIR="$BASE/run" PG_CONFIG="$PG_BIN/pg_config" "$@"
}

install_packages() {
    if command -v pg_autoctl >/dev/null && [ -f /usr/share/postgresql/15/extension/pgautofailover.control ]; then
        return
    fi
    echo "installing pg_auto_failover (postgresql-15-auto-failover, pg-auto-failover-cli)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql-15-auto-failover pg-auto-failover-cli >/dev/null 2>&1 || {
        apt-get update >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            postgresql-15-auto-failover pg-auto-failover-cli >/dev/null
    }
}

wait_port() {  # PORT WHAT SECONDS
    for _ in $(seq $(( $3 * 4 ))); do pg_isready -q -h 127.0.0.1 -p "$1" && return; sleep 0.25; done
    echo "$2 (port $1) did not accept connections within $3 s; see $BASE/*.log" >&2; exit 1
}

keeper_running() { [ -f "$BASE/$1/postmaster.pid" ] && as_postgres pg_autoctl status --pgdata "$BASE/$1" >/dev/null 2>&1; }

run_node() {  # NAME: start the node's keeper in its own session, so it outlives this script and its caller
    node_port "$1" >/dev/null
    keeper_running "$1" && return
    as_postgres setsid pg_autoctl run --pgdata "$BASE/$1" >>"$BASE/$1.log" 2>&1 < /dev/null &
}

# Trust on 127.0.0.1 for every database and for replication: for tests only. pg_autoctl's own rules
# (`--auth trust`) name the one database it was created with; the services create theirs at start-up.
write_hba() {
    local hba="$BASE/$1/pg_hba.conf"
    grep -q '^host all all 127.0.0.1/32 trust$' "$hba" 2>/dev/null ||
        printf 'host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n' >> "$hba"
}

monitor_sql() { psql -X -q -At -h 127.0.0.1 -p "$MONITOR_PORT" -U autoctl_node -d pg_auto_failover -c "$1"; }

create_monitor() {
    as_postgres pg_autoctl create monitor --pgdata "$BASE/monitor" --pgport "$MONITOR_PORT" --hostname 127.0.0.1 \
        --listen 127.0.0.1 --auth trust --no-ssl >>"$BASE/monitor.log" 2>&1
    write_hba monitor
}

tune_monitor() {
    # The defaults (a check every 5 s, unhealthy after 20 s, 30 s demote timeout) suit a network of real
    # machines; on one machine they only make every failover test wait a minute.
    local psql=(psql -X -q -h 127.0.0.1 -p "$MONITOR_PORT" -U postgres -d pg_auto_failover)
    if [ "$FAST" = 1 ]; then
        "${psql[@]}" -c "ALTER SYSTEM SET pgautofailover.health_check_period = 1000" \
            -c "ALTER SYSTEM SET pgautofailover.health_check_timeout = 1000" \
            -c "ALTER SYSTEM SET pgautofailover.health_check_max_retries = 1" \
            -c "ALTER SYSTEM SET pgautofailover.health_check_retry_delay = 500" \
            -c "ALTER SYSTEM SET pgautofailover.node_considered_unhealthy_timeout = 3000" \
            -c "ALTER SYSTEM SET pgautofailover.primary_demote_timeout = 6000" -c "SELECT pg_reload_conf()" >/dev/null
    else
        "${psql[@]}" -c "ALTER SYSTEM RESET ALL" -c "SELECT pg_reload_conf()" >/dev/null
    fi
}

create_node() {  # NAME
    local port; port=$(node_port "$1")
    as_postgres pg_autoctl create postgres --pgdata "$BASE/$1" --pgport "$port" --hostname 127.0.0.1 --listen 127.0.0.1 \
        --name "$1" --auth trust --no-ssl --dbname postgres --monitor "$MONITOR_URI" \
        --replication-quorum true --candidate-priority 50 >>"$BASE/$1.log" 2>&1 || {
        echo "creating $1 failed; see $BASE/$1.log" >&2; tail -20 "$BASE/$1.log" >&2; exit 1; }
    write_hba "$1"
    if [ "$FAST" = 1 ]; then
        # A keeper that cannot reach the monitor nor its standby demotes itself after this many seconds; it
        # must stay below primary_demote_timeout (6 s) so that two primaries never accept writes at once.
        as_postgres pg_autoctl config set --pgdata "$BASE/$1" timeout.network_partition_timeout 4 >/dev/null
    fi
}

node_state() {  # NAME -> the monitor's reported state of that node (primary, secondary, catchingup, ...)
    monitor_sql "SELECT reportedstate FROM pgautofailover.node WHERE nodename = '$1'" 2>/dev/null || true
}

wait_state() {  # NAME STATE SECONDS
    for _ in $(seq $(( $3 * 2 ))); do [ "$(node_state "$1")" = "$2" ] && return; sleep 0.5; done
    echo "$1 did not reach state $2 within $3 s (now: $(node_state "$1")); see $BASE/$1.log" >&2; exit 1
}

start() {
    install_packages
    mkdir -p "$BASE/config" "$BASE/share" "$BASE/run"
    [ -f "$SETTINGS" ] || printf 'PG_HA_MONITOR_PORT=%s\nPG_HA_NODE1_PORT=%s\nPG_HA_NODE2_PORT=%s\n' \
        "$MONITOR_PORT" "$NODE1_PORT" "$NODE2_PORT" > "$SETTINGS"
    chmod 700 "$BASE/run"
    chown -R postgres:postgres "$BASE"
    chown root:root "$SETTINGS"  # sourced by root: only root may change it
    [ -d "$BASE/monitor" ] || create_monitor
    run_node monitor
    wait_port "$MONITOR_PORT" monitor 60
    tune_monitor
    for node in "${NODES[@]}"; do
        if [ ! -f "$BASE/$node/PG_VERSION" ]; then
            create_node "$node"
        fi
        run_node "$node"
    done
    for node in "${NODES[@]}"; do wait_port "$(node_port "$node")" "$node" 120; done
    # One node primary and the other secondary (streaming, in the synchronous quorum) before anyone writes.
    for _ in $(seq 240); do
        states=$(monitor_sql "SELECT string_agg(reportedstate || '/' || goalstate, ' ' ORDER BY reportedstate)
                              FROM pgautofailover.node")
        [ "$states" = "primary/primary secondary/secondary" ] && break
        sleep 0.5
    done
    [ "$states" = "primary/primary secondary/secondary" ] || {
        echo "formation not ready within 120 s (states: $states); see $BASE/*.log" >&2; exit 1; }
    print_env
}

stop() {
    for node in node2 node1 monitor; do
        if [ -d "$BASE/$node" ]; then
            as_postgres pg_autoctl stop --pgdata "$BASE/$node" >/dev/null 2>&1 || true
        fi
    done
    for node in node2 node1 monitor; do
        for _ in $(seq 60); do pg_isready -q -h 127.0.0.1 -p "$(node_port "$node")" || break; sleep 0.5; done
    done
}

kill_node() {  # NAME: SIGKILL the node's keeper, postmaster and every server process at once: the machine is lost
    local pgdata="$BASE/$1" keeper postmaster="" children=""
    node_port "$1" >/dev/null
    # `setsid` made the keeper a process group leader; the postmaster it starts stays in that group, but each
    # server process (backends, walsender) is in a group of its own: without killing them too, they go on
    # committing for a moment after the postmaster is gone.
    keeper=$(pgrep -u postgres -f "^pg_autoctl run --pgdata $pgdata\$" || true)
    if [ -f "$pgdata/postmaster.pid" ]; then
        postmaster=$(head -1 "$pgdata/postmaster.pid")
        children=$(pgrep -P "$postmaster" || true)
    fi
    # shellcheck disable=SC2086 # word splitting of the pid lists is meant
    kill -KILL ${keeper:+-- "-$keeper"} $postmaster $children 2>/dev/null || true
}

roles() {  # one line per data node: name, port, the state it reported, the state the monitor assigned
    monitor_sql "SELECT nodename, nodeport, reportedstate, goalstate FROM pgautofailover.node ORDER BY nodename" |
        tr '|' ' '
}

status() {
    if ! pg_isready -q -h 127.0.0.1 -p "$MONITOR_PORT"; then echo "monitor (port $MONITOR_PORT) is down"; exit 3; fi
    as_postgres pg_autoctl show state --pgdata "$BASE/monitor"
    as_postgres pg_autoctl show settings --pgdata "$BASE/monitor" 2>/dev/null || true
}

destroy() {
    stop
    rm -rf "$BASE"
}

case ${1:-} in
    start) start ;;
    env) print_env ;;
    status) status ;;
    roles) roles ;;
    stop) stop ;;
    destroy) destroy ;;
    kill-node) kill_node "${2:?kill-node needs a node name (node1 or node2)}" ;;
    run-node) run_node "${2:?run-node needs a node name (node1 or node2)}" ;;
    *) echo "usage: $0 start|stop|status|destroy|env|roles|kill-node NAME|run-node NAME" >&2; exit 2 ;;
esac
