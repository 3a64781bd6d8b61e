#!/usr/bin/env bash
# The whole topology on one machine, each node in a network namespace of its own, so that a partition, a hung node
# or a power loss is silent as on real machines (loopback answers a dead port with a reset at once; a cut cable,
# a dropped packet and a frozen peer answer nothing):
#   three RabbitMQ nodes (r1 r2 r3), a PostgreSQL primary + synchronous standby (pg1 pg2) under a pg_auto_failover
#   monitor (monitor), and the gateway, the Order Service and the Payments Service (gateway order payment),
# joined by a bridge in a namespace of its own (NETNS_PREFIX-br). Faults are nft rules in that namespace
# (harness/netns.py: cut, heal, freeze, power_loss); docs/partitions.md says what each component does under them.
#
#   scripts/netns-cluster.sh start    create the namespaces, check them, start every node; print the topology
#   scripts/netns-cluster.sh status   each node: its address and whether it runs; the formation; the cluster
#   scripts/netns-cluster.sh stop     stop every process, delete the namespaces and every file under NETNS_BASE
#   scripts/netns-cluster.sh run-node NODE   start a node's processes again (after harness.netns power_loss)
#
# Safety: the addresses (NETNS_SUBNET.0/24, private) exist only inside these namespaces, none of which has a
# default route (checked before anything starts: the script refuses otherwise), and the root namespace gets no
# interface on the bridge. The tests reach the gateway through a Unix socket, forwarded to 127.0.0.1:NETNS_GATEWAY_PORT,
# and read the databases over their Unix sockets: nothing leaves loopback. Never touches the machine's PostgreSQL
# (5432) or RabbitMQ node (rabbit@localhost, 5672): own node names, ports and directories.
#
#   NETNS_PREFIX (shopnet), NETNS_SUBNET (10.231.77), NETNS_BASE (/var/tmp/shop-netns),
#   NETNS_GATEWAY_PORT (18480, on 127.0.0.1), NETNS_PG_PORTS ("5450 5451 5452": monitor pg1 pg2; distinct so that
#   their Unix sockets in /var/run/postgresql never meet the machine's or each other's),
#   NETNS_SERVICE_ENV (KEY=VALUE settings, space-separated, added to the services' own: e.g. a timeout set back to
#   what it was, to show that the fault run fails without it); likewise NETNS_WAL_SENDER_TIMEOUT,
#   NETNS_KEEPER_CONNECT_TIMEOUT, NETNS_NETWORK_PARTITION_TIMEOUT, NETNS_UNHEALTHY_TIMEOUT_MS, NETNS_DEMOTE_TIMEOUT_MS
#   and NETNS_NET_TICKTIME for the cluster timings below
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${NETNS_PREFIX:-shopnet}
SUBNET=${NETNS_SUBNET:-10.231.77}
BASE=${NETNS_BASE:-/var/tmp/shop-netns}
GATEWAY_PORT=${NETNS_GATEWAY_PORT:-18480}
read -r MONITOR_PORT PG1_PORT PG2_PORT <<< "${NETNS_PG_PORTS:-5450 5451 5452}"
PG_BIN=/usr/lib/postgresql/15/bin
# PostgreSQL's files, owned by postgres (pg_autoctl writes beside each data directory, e.g. backup/).
PGBASE=$BASE/pg
BRIDGE_NS=$PREFIX-br
PYTHON=$ROOT/.venv/bin/python

# node -> last byte of its address. Groups (harness/netns.py): rabbit, postgres, services.
declare -A HOST=([r1]=11 [r2]=12 [r3]=13 [monitor]=20 [pg1]=21 [pg2]=22 [gateway]=30 [order]=31 [payment]=32)
NODES=(r1 r2 r3 monitor pg1 pg2 gateway order payment)
RABBITS=(r1 r2 r3)

# --- pg_auto_failover timings. The rule (docs/partitions.md): a primary cut off from the monitor and its standby
# demotes itself before the monitor promotes the standby, so two primaries never accept writes at once:
#   wal_sender_timeout (6 s: the cut primary's standby row in pg_stat_replication is gone)
#   + timeout.network_partition_timeout (4 s, pg_autoctl keeper: then it demotes itself) + its 1 s loop = 11 s
#   < pgautofailover.node_considered_unhealthy_timeout (5 s) + pgautofailover.primary_demote_timeout (8 s) = 13 s,
# the least time before the monitor promotes; the services find the new primary within a few seconds more, under
# the 25 s a fault may cost. And the keeper must find the monitor gone while the standby's row is still there
# (pg_autoctl counts itself partitioned only once it has seen its standby after losing the monitor):
#   its 1 s loop + two monitor connection attempts of KEEPER_CONNECT_TIMEOUT (1 s) = 3 s < wal_sender_timeout.
WAL_SENDER_TIMEOUT=${NETNS_WAL_SENDER_TIMEOUT:-6s}
KEEPER_CONNECT_TIMEOUT=${NETNS_KEEPER_CONNECT_TIMEOUT:-1}
NETWORK_PARTITION_TIMEOUT=${NETNS_NETWORK_PARTITION_TIMEOUT:-4}
UNHEALTHY_TIMEOUT_MS=${NETNS_UNHEALTHY_TIMEOUT_MS:-5000}
DEMOTE_TIMEOUT_MS=${NETNS_DEMOTE_TIMEOUT_MS:-8000}
# RabbitMQ: autoheal. A node hung (or cut) longer than net_ticktime finds, once it is back, that the others took it
# for dead: a partition seen only after it ended, which pause_minority never acts on (the cluster stayed split
# after such a thaw here), while autoheal restarts the losing side and the cluster is whole within seconds. Quorum
# queues (Raft) keep a minority from confirming anything meanwhile, so not pausing it loses nothing; a publisher
# on it leaves after its confirms time out. net_ticktime 10 s (Erlang's default 60) lets the nodes see a silent
# peer within 10-15 s.
NET_TICKTIME=${NETNS_NET_TICKTIME:-10}

addr() { echo "$SUBNET.${HOST[$1]}"; }
ns() { echo "$PREFIX-$1"; }
in_ns() { local node=$1; shift; ip netns exec "$(ns "$node")" "$@"; }
pg_port() { case $1 in monitor) echo "$MONITOR_PORT" ;; pg1) echo "$PG1_PORT" ;; pg2) echo "$PG2_PORT" ;; esac; }

die() { echo "netns-cluster: $*" >&2; exit 1; }

require_tools() {
    [ "$(id -u)" = 0 ] || die "must run as root (network namespaces, nft)"
    command -v nft >/dev/null || {
        echo "installing nftables" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nftables >/dev/null 2>&1 || {
            apt-get update >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
                nftables >/dev/null; }
    }
    command -v pg_autoctl >/dev/null && [ -f /usr/share/postgresql/15/extension/pgautofailover.control ] || {
        echo "installing pg_auto_failover" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15-auto-failover \
            pg-auto-failover-cli >/dev/null 2>&1 || { apt-get update >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15-auto-failover \
                pg-auto-failover-cli >/dev/null; }
    }
    for tool in socat rabbitmq-server rabbitmqctl; do command -v "$tool" >/dev/null || die "$tool is missing"; done
}

# --- network ---------------------------------------------------------------------------------------------------

create_network() {
    ip netns list | grep -q "^$BRIDGE_NS\b" && die "$BRIDGE_NS exists: run '$0 stop' first"
    ip netns add "$BRIDGE_NS"
    ip -n "$BRIDGE_NS" link set lo up
    ip -n "$BRIDGE_NS" link add br0 type bridge
    ip -n "$BRIDGE_NS" link set br0 up
    for node in "${NODES[@]}"; do
        ip netns add "$(ns "$node")"
        ip -n "$(ns "$node")" link set lo up
        ip -n "$BRIDGE_NS" link add "v-$node" type veth peer name eth0 netns "$(ns "$node")"
        ip -n "$BRIDGE_NS" link set "v-$node" master br0 up
        ip -n "$(ns "$node")" addr add "$(addr "$node")/24" dev eth0
        ip -n "$(ns "$node")" link set eth0 up
    done
    # The fault table: empty chains until harness/netns.py adds drops (heal = flush the chain).
    ip netns exec "$BRIDGE_NS" nft -f - <<END
table bridge $PREFIX {
    chain forward { type filter hook forward priority 0; policy accept; }
}
END
}

# Refuses (exit 1) if any namespace of the topology has a default route or the root namespace has an address in
# the subnet: traffic to a test address must never leave these namespaces.
check_isolated() {
    local route
    for name in "$BRIDGE_NS" $(for node in "${NODES[@]}"; do ns "$node"; done); do
        route=$(ip -n "$name" route show default; ip -n "$name" -6 route show default)
        [ -z "$route" ] || die "namespace $name has a default route ($route): refusing to start"
    done
    if ip -o addr show | grep -q " $SUBNET\."; then
        die "the root namespace has an address in $SUBNET.0/24: refusing to start"
    fi
}

delete_network() {
    for node in "${NODES[@]}"; do ip netns delete "$(ns "$node")" 2>/dev/null || true; done
    ip netns delete "$BRIDGE_NS" 2>/dev/null || true
}

# --- RabbitMQ ------------------------------------------------------------------------------------------------------

rabbit_name() { echo "$PREFIX-$1@$(addr "$1")"; }
rabbit_env() { echo "$BASE/$1/rabbitmq-env.conf"; }
rabbitctl() { local node=$1; shift; in_ns "$node" env RABBITMQ_CONF_ENV_FILE="$(rabbit_env "$node")" rabbitmqctl "$@"; }

write_rabbit_files() {
    local node=$1 dir=$BASE/$1
    mkdir -p "$dir/mnesia" "$dir/log"
    cat > "$dir/rabbitmq.conf" <<END
listeners.tcp.local = $(addr "$node"):5672
cluster_partition_handling = autoheal
# The services log in from other namespaces; guest is a loopback-only user otherwise. A test cluster only.
loopback_users = none
END
    echo "[{kernel, [{net_ticktime, $NET_TICKTIME}]}]." > "$dir/advanced.config"
    : > "$dir/enabled_plugins"
    cat > "$(rabbit_env "$node")" <<END
NODENAME=$(rabbit_name "$node")
USE_LONGNAME=true
NODE_PORT=5672
DIST_PORT=25672
CONFIG_FILE=$dir/rabbitmq.conf
ADVANCED_CONFIG_FILE=$dir/advanced.config
MNESIA_BASE=$dir/mnesia
LOG_BASE=$dir/log
ENABLED_PLUGINS_FILE=$dir/enabled_plugins
PID_FILE=$dir/rabbitmq.pid
END
    chown -R rabbitmq:rabbitmq "$dir"
}

rabbit_up() { rabbitctl "$1" -q await_startup --timeout 3 >/dev/null 2>&1; }

wait_rabbit() {
    for _ in $(seq 120); do rabbit_up "$1" && return; sleep 1; done
    die "RabbitMQ node $(rabbit_name "$1") did not come up; see $BASE/$1/log"
}

start_rabbits() {
    for node in "${RABBITS[@]}"; do
        write_rabbit_files "$node"
        in_ns "$node" env RABBITMQ_CONF_ENV_FILE="$(rabbit_env "$node")" setsid rabbitmq-server -detached
    done
    for node in "${RABBITS[@]}"; do wait_rabbit "$node"; done
    for node in r2 r3; do
        rabbitctl "$node" -q stop_app
        rabbitctl "$node" -q join_cluster "$(rabbit_name r1)"
        rabbitctl "$node" -q start_app
        wait_rabbit "$node"
    done
}

# --- PostgreSQL under pg_auto_failover ------------------------------------------------------------------------------

as_postgres() {
    local node=$1; shift
    in_ns "$node" runuser -u postgres -- env PATH="$PG_BIN:$PATH" XDG_CONFIG_HOME="$PGBASE/config" \
        XDG_DATA_HOME="$PGBASE/share" XDG_RUNTIME_DIR="$PGBASE/run" PG_CONFIG="$PG_BIN/pg_config" "$@"
}

monitor_uri() { echo "postgres://autoctl_node@$(addr monitor):$MONITOR_PORT/pg_auto_failover?sslmode=disable"; }

# Trust within the subnet and over the Unix socket: a test formation, reachable from nowhere else.
allow_subnet() {
    printf 'local all all trust\nhost all all %s.0/24 trust\nhost replication all %s.0/24 trust\n' \
        "$SUBNET" "$SUBNET" >> "$PGBASE/$1/pg_hba.conf"
}

run_keeper() {
    as_postgres "$1" env PGCONNECT_TIMEOUT="$KEEPER_CONNECT_TIMEOUT" setsid pg_autoctl run --pgdata "$PGBASE/$1" \
        >> "$BASE/$1.log" 2>&1 < /dev/null &
}

wait_pg() {  # NODE SECONDS
    for _ in $(seq $(( $2 * 2 ))); do pg_isready -q -h /var/run/postgresql -p "$(pg_port "$1")" && return; sleep 0.5; done
    die "PostgreSQL $1 did not accept connections within $2 s; see $BASE/$1.log"
}

monitor_sql() { psql -X -q -At -h /var/run/postgresql -p "$MONITOR_PORT" -U postgres -d pg_auto_failover -c "$1"; }

start_monitor() {
    as_postgres monitor pg_autoctl create monitor --pgdata "$PGBASE/monitor" --pgport "$MONITOR_PORT" \
        --hostname "$(addr monitor)" --listen "$(addr monitor)" --auth trust --no-ssl >> "$BASE/monitor.log" 2>&1 ||
        die "creating the monitor failed; see $BASE/monitor.log"
    allow_subnet monitor
    run_keeper monitor
    wait_pg monitor 60
    monitor_sql "ALTER SYSTEM SET pgautofailover.health_check_period = 1000" >/dev/null
    monitor_sql "ALTER SYSTEM SET pgautofailover.health_check_timeout = 1000" >/dev/null
    monitor_sql "ALTER SYSTEM SET pgautofailover.health_check_max_retries = 1" >/dev/null
    monitor_sql "ALTER SYSTEM SET pgautofailover.health_check_retry_delay = 500" >/dev/null
    monitor_sql "ALTER SYSTEM SET pgautofailover.node_considered_unhealthy_timeout = $UNHEALTHY_TIMEOUT_MS" >/dev/null
    monitor_sql "ALTER SYSTEM SET pgautofailover.primary_demote_timeout = $DEMOTE_TIMEOUT_MS" >/dev/null
    monitor_sql "SELECT pg_reload_conf()" >/dev/null
}

start_data_node() {  # NODE (one after the other: the first becomes the primary)
    local node=$1
    as_postgres "$node" pg_autoctl create postgres --pgdata "$PGBASE/$node" --pgport "$(pg_port "$node")" \
        --hostname "$(addr "$node")" --listen "$(addr "$node")" --name "$node" --auth trust --no-ssl \
        --dbname postgres --monitor "$(monitor_uri)" --replication-quorum true --candidate-priority 50 \
        >> "$BASE/$node.log" 2>&1 || { tail -20 "$BASE/$node.log" >&2; die "creating $node failed"; }
    allow_subnet "$node"
    as_postgres "$node" pg_autoctl config set --pgdata "$PGBASE/$node" timeout.network_partition_timeout \
        "$NETWORK_PARTITION_TIMEOUT" >/dev/null
    run_keeper "$node"
    wait_pg "$node" 120
    psql -X -q -h /var/run/postgresql -p "$(pg_port "$node")" -U postgres -d postgres \
        -c "ALTER SYSTEM SET wal_sender_timeout = '$WAL_SENDER_TIMEOUT'" -c "SELECT pg_reload_conf()" >/dev/null
}

wait_formation() {
    local states=""
    for _ in $(seq 240); do
        states=$(monitor_sql "SELECT string_agg(reportedstate || '/' || goalstate, ' ' ORDER BY reportedstate)
                              FROM pgautofailover.node" 2>/dev/null || true)
        [ "$states" = "primary/primary secondary/secondary" ] && return
        sleep 0.5
    done
    die "formation not ready within 120 s (states: $states); see $BASE/*.log"
}

start_postgres() {
    mkdir -p "$PGBASE/config" "$PGBASE/share" "$PGBASE/run"
    chmod 700 "$PGBASE/run"
    chown -R postgres:postgres "$PGBASE"
    start_monitor
    start_data_node pg1
    start_data_node pg2
    wait_formation
}

# --- the services -------------------------------------------------------------------------------------------------

dsn() { echo "postgresql://postgres@$(addr pg1):$PG1_PORT,$(addr pg2):$PG2_PORT/$1?target_session_attrs=read-write"; }

# Both data nodes over their Unix sockets, the writable one chosen by libpq (psycopg2 opens multi-host DSNs).
socket_dsn() {
    echo "host=/var/run/postgresql,/var/run/postgresql port=$PG1_PORT,$PG2_PORT dbname=$1 user=postgres" \
         "target_session_attrs=read-write connect_timeout=3"
}

amqp_urls() {
    local urls=()
    for node in "${RABBITS[@]}"; do urls+=("amqp://guest:guest@$(addr "$node"):5672/"); done
    (IFS=,; echo "${urls[*]}")
}

service_env() {
    cat <<END
AUTH_MODE=off
LOG_LEVEL=INFO
QUEUE_TYPE=quorum
ORDER_DB_DSN=$(dsn orders)
PAYMENT_DB_DSN=$(dsn payments)
RABBITMQ_URL=$(amqp_urls)
GATEWAY_LISTEN_ADDRESS=$(addr gateway)
GATEWAY_PORT=8080
ORDER_SVC_PORT=8081
PAYMENT_SVC_PORT=8082
ORDER_SVC_URL=http://$(addr order):8081
PAYMENT_SVC_URL=http://$(addr payment):8082
ORDER_SVC_ADMIN_URL=http://$(addr order):9081
PAYMENT_SVC_ADMIN_URL=http://$(addr payment):9082
END
    local setting
    for setting in ${NETNS_SERVICE_ENV:-}; do echo "$setting"; done
}

start_service() {  # NODE MODULE
    local node=$1 module=$2 settings
    mapfile -t settings < <(service_env)
    in_ns "$node" env "${settings[@]}" LISTEN_ADDRESS="$(addr "$node")" ADMIN_LISTEN_ADDRESS="$(addr "$node")" \
        setsid "$PYTHON" -m "$module" >> "$BASE/$node.log" 2>&1 < /dev/null &
    echo $! > "$BASE/$node.pid"
}

wait_http() {  # NODE PORT PATH
    for _ in $(seq 120); do
        in_ns "$1" "$PYTHON" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
            "http://$(addr "$1"):$2$3" 2>/dev/null && return
        sleep 1
    done
    die "$1 did not answer http://$(addr "$1"):$2$3 within 120 s; see $BASE/$1.log"
}

start_services() {
    (cd "$ROOT" && start_service order order_svc && start_service payment payment_svc && start_service gateway gateway)
    wait_http order 9081 /ready
    wait_http payment 9082 /ready
    wait_http gateway 8080 /health
    # The tests' way in: 127.0.0.1:GATEWAY_PORT -> a Unix socket -> the gateway, from inside its namespace.
    in_ns gateway setsid socat "UNIX-LISTEN:$BASE/gateway.sock,fork,unlink-early" "TCP:$(addr gateway):8080" \
        >> "$BASE/socat.log" 2>&1 < /dev/null &
    echo $! > "$BASE/socat-gateway.pid"
    for _ in $(seq 50); do [ -S "$BASE/gateway.sock" ] && break; sleep 0.1; done
    setsid socat "TCP-LISTEN:$GATEWAY_PORT,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$BASE/gateway.sock" \
        >> "$BASE/socat.log" 2>&1 < /dev/null &
    echo $! > "$BASE/socat-root.pid"
}

# --- the topology file harness/netns.py reads ------------------------------------------------------------------------

write_topology() {
    "$PYTHON" - "$BASE/topology.json" <<END
import json, sys
nodes = {$(for node in "${NODES[@]}"; do printf '"%s": "%s", ' "$node" "$(addr "$node")"; done)}
json.dump({
    "prefix": "$PREFIX", "bridge_namespace": "$BRIDGE_NS", "table": "$PREFIX", "subnet": "$SUBNET.0/24",
    "nodes": nodes, "namespaces": {node: "$PREFIX-" + node for node in nodes},
    "groups": {"rabbit": ["r1", "r2", "r3"], "postgres": ["monitor", "pg1", "pg2"],
               "services": ["gateway", "order", "payment"]},
    "gateway_url": "http://127.0.0.1:$GATEWAY_PORT",
    "pg_ports": {"monitor": $MONITOR_PORT, "pg1": $PG1_PORT, "pg2": $PG2_PORT},
    # Over the Unix sockets, from the root namespace: never through the bridge that faults cut.
    "order_db": "$(socket_dsn orders)",
    "payment_db": "$(socket_dsn payments)",
    "rabbit_env_files": {node: "$BASE/" + node + "/rabbitmq-env.conf" for node in ["r1", "r2", "r3"]},
    "base": "$BASE",
    "timings": {"wal_sender_timeout": "$WAL_SENDER_TIMEOUT", "network_partition_timeout": $NETWORK_PARTITION_TIMEOUT,
                "node_considered_unhealthy_timeout_ms": $UNHEALTHY_TIMEOUT_MS,
                "primary_demote_timeout_ms": $DEMOTE_TIMEOUT_MS, "net_ticktime": $NET_TICKTIME},
}, open(sys.argv[1], "w"), indent=2)
END
}

# --- commands -----------------------------------------------------------------------------------------------------

start() {
    require_tools
    [ -e "$BASE" ] && die "$BASE exists: run '$0 stop' first"
    mkdir -p "$BASE"
    create_network
    check_isolated
    start_rabbits
    start_postgres
    start_services
    write_topology
    echo "topology: $BASE/topology.json; gateway: http://127.0.0.1:$GATEWAY_PORT"
}

# Every process of a node is in its namespace: `ip netns pids` finds them all, whatever they are.
kill_namespace() {
    local pids
    pids=$(ip netns pids "$(ns "$1")" 2>/dev/null || true)
    [ -z "$pids" ] && return
    # shellcheck disable=SC2086 # one pid per word
    kill -CONT $pids 2>/dev/null || true
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
}

# An orderly stop of the keepers and their PostgreSQL first (bounded: a node may be cut off or frozen), so that
# no server is left half-stopped; then whatever is left in each namespace is killed.
stop_keepers() {
    ip netns exec "$BRIDGE_NS" nft flush table bridge "$PREFIX" 2>/dev/null || true
    for node in pg2 pg1 monitor; do
        ip netns pids "$(ns "$node")" 2>/dev/null | xargs -r kill -CONT 2>/dev/null || true
        [ -d "$PGBASE/$node" ] && timeout 20 runuser -u postgres -- env PATH="$PG_BIN:$PATH" \
            XDG_CONFIG_HOME="$PGBASE/config" XDG_DATA_HOME="$PGBASE/share" XDG_RUNTIME_DIR="$PGBASE/run" \
            pg_autoctl stop --pgdata "$PGBASE/$node" >/dev/null 2>&1 || true
    done
}

stop() {
    [ "$(id -u)" = 0 ] || die "must run as root"
    if [ -s "$BASE/socat-root.pid" ]; then kill "$(cat "$BASE/socat-root.pid")" 2>/dev/null || true; fi
    ip netns list | grep -q "^$BRIDGE_NS\b" && stop_keepers
    for node in "${NODES[@]}"; do kill_namespace "$node"; done
    delete_network
    rm -rf "$BASE"
}

status() {
    local running=0
    for node in "${NODES[@]}"; do
        if ip netns list | grep -q "^$(ns "$node")\b"; then
            echo "$node $(addr "$node") $(ip netns pids "$(ns "$node")" | wc -l) processes"
            running=$((running + 1))
        else
            echo "$node $(addr "$node") no namespace"
        fi
    done
    [ "$running" -gt 0 ] || exit 3
    monitor_sql "SELECT nodename, reportedstate, goalstate FROM pgautofailover.node ORDER BY nodename" 2>/dev/null ||
        echo "monitor: no answer"
    for node in "${RABBITS[@]}"; do
        echo "$node sees running: $(rabbitctl "$node" -q cluster_status --formatter json 2>/dev/null |
            "$PYTHON" -c 'import json, sys; print(*json.load(sys.stdin)["running_nodes"])' 2>/dev/null || echo "no answer")"
    done
    ip netns exec "$BRIDGE_NS" nft list table bridge "$PREFIX"
}

# A node's processes started again in its namespace (after a power loss): a keeper, a RabbitMQ node, a service.
run_node() {
    local node=$1
    [ -n "${HOST[$node]:-}" ] || die "no node '$node' (${NODES[*]})"
    case $node in
        r1|r2|r3) in_ns "$node" env RABBITMQ_CONF_ENV_FILE="$(rabbit_env "$node")" setsid rabbitmq-server -detached
                  wait_rabbit "$node" ;;
        monitor|pg1|pg2) run_keeper "$node"; wait_pg "$node" 60 ;;
        order) (cd "$ROOT" && start_service order order_svc) ;;
        payment) (cd "$ROOT" && start_service payment payment_svc) ;;
        gateway) die "the gateway's namespace also holds the tests' way in: stop and start the topology" ;;
    esac
}

case ${1:-} in
    start) start ;;
    run-node) run_node "${2:?run-node needs a node name}" ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status|run-node NODE" >&2; exit 2 ;;
esac
