#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine (Debian's rabbitmq-server), for the cluster tests, chaos runs
# and trials. It never touches the machine's default node rabbit@localhost on 5672.
#
#   scripts/rabbitmq-cluster.sh start     create (first time), start the three nodes, join them; print the variables
#   scripts/rabbitmq-cluster.sh env       just print them:  eval "$(scripts/rabbitmq-cluster.sh env)"
#   scripts/rabbitmq-cluster.sh status    each node: running or not; the cluster's view; the queues' leaders
#   scripts/rabbitmq-cluster.sh stop      stop the three nodes (data kept; `start` brings the same cluster back)
#   scripts/rabbitmq-cluster.sh destroy   kill the three nodes (by their pid files) and delete their data and logs
#
# Names, ports and directory can be changed (a second cluster beside the first needs all three changed):
#   RABBIT_CLUSTER_NODES="shop1 shop2 shop3"        node names (each @localhost)
#   RABBIT_CLUSTER_AMQP_PORTS="5681 5682 5683"      AMQP listeners, one per node
#   RABBIT_CLUSTER_DIST_PORTS="25681 25682 25683"   Erlang distribution ports, one per node
#   RABBIT_CLUSTER_BASE=/var/tmp/shop-rabbitmq-cluster   data and logs under BASE/<node>
set -euo pipefail
# shellcheck source=scripts/rabbitmq-node.sh
. "$(dirname "$0")/rabbitmq-node.sh"

read -r -a NODES <<< "${RABBIT_CLUSTER_NODES:-shop1 shop2 shop3}"
read -r -a AMQP_PORTS <<< "${RABBIT_CLUSTER_AMQP_PORTS:-5681 5682 5683}"
read -r -a DIST_PORTS <<< "${RABBIT_CLUSTER_DIST_PORTS:-25681 25682 25683}"
BASE=${RABBIT_CLUSTER_BASE:-/var/tmp/shop-rabbitmq-cluster}

if [ "${#NODES[@]}" -ne "${#AMQP_PORTS[@]}" ] || [ "${#NODES[@]}" -ne "${#DIST_PORTS[@]}" ]; then
    echo "RABBIT_CLUSTER_NODES, _AMQP_PORTS and _DIST_PORTS must have as many entries each" >&2; exit 2
fi
for i in "${!NODES[@]}"; do
    # The shared default node (CI and everyone else's tests) must never be addressed by this script.
    if [ "${NODES[$i]}" = rabbit ] || [ "${AMQP_PORTS[$i]}" = 5672 ] || [ "${DIST_PORTS[$i]}" = 25672 ]; then
        echo "refusing node ${NODES[$i]} on ${AMQP_PORTS[$i]}/${DIST_PORTS[$i]}: that is the default node's" >&2
        exit 2
    fi
done

node_dir() { echo "$BASE/${NODES[$1]}"; }
# RabbitMQ's scripts read every node setting from this file (RABBITMQ_CONF_ENV_FILE), so rabbitmqctl and
# rabbitmq-server pointed at it address that node and no other.
env_file() { echo "$(node_dir "$1")/rabbitmq-env.conf"; }
ctl() { local i=$1; shift; RABBITMQ_CONF_ENV_FILE=$(env_file "$i") rabbitmqctl "$@"; }

print_env() {
    local urls=() envs=()
    for i in "${!NODES[@]}"; do
        urls+=("amqp://guest:guest@127.0.0.1:${AMQP_PORTS[$i]}/")
        envs+=("$(env_file "$i")")
    done
    local joined_urls joined_envs
    joined_urls=$(IFS=,; echo "${urls[*]}")
    joined_envs=$(IFS=,; echo "${envs[*]}")
    cat <<END
# the services (vhost "/"; add a vhost path to each URL for another)
export RABBITMQ_URL='$joined_urls'
export QUEUE_TYPE=quorum
# the test harness (harness/infra.py): every node's URL without vhost, rabbitmqctl through any node
export SHOP_TEST_AMQP='$joined_urls'
export SHOP_TEST_RABBITMQ_ENV='${envs[0]}'
export SHOP_TEST_RABBITMQ_NODES='$joined_envs'
END
}

setup_node() {
    local i=$1 dir
    dir=$(node_dir "$i")
    write_node_files "$dir" "${NODES[$i]}" "${AMQP_PORTS[$i]}" "${DIST_PORTS[$i]}" "$(env_file "$i")"
}

is_up() { ctl "$1" -q await_startup --timeout 3 >/dev/null 2>&1; }

start_node() {
    local i=$1
    is_up "$i" && return
    # setsid: the node must outlive the shell (and process group) that started it.
    ctl "$i" -q start_app >/dev/null 2>&1 || RABBITMQ_CONF_ENV_FILE=$(env_file "$i") setsid rabbitmq-server -detached
}

wait_node() {
    local i=$1
    for _ in $(seq 180); do is_up "$i" && return; sleep 1; done
    echo "RabbitMQ node ${NODES[$i]}@localhost did not come up; see $(node_dir "$i")/log" >&2; exit 1
}

# A node that is not yet a member of the first node's cluster joins it (a fresh node must be reset first).
join_node() {
    local i=$1 first="${NODES[0]}@localhost"
    if ctl "$i" -q cluster_status --formatter json | grep -q "\"$first\""; then
        return
    fi
    ctl "$i" -q stop_app
    ctl "$i" -q reset
    ctl "$i" -q join_cluster "$first" >/dev/null 2>&1 || ctl "$i" -q join_cluster "$first"
    ctl "$i" -q start_app
    wait_node "$i"
}

start() {
    for i in "${!NODES[@]}"; do setup_node "$i"; done
    # All at once: a stopped cluster's nodes wait for each other at boot (the last one stopped first).
    for i in "${!NODES[@]}"; do start_node "$i"; done
    for i in "${!NODES[@]}"; do wait_node "$i"; done
    for i in "${!NODES[@]}"; do [ "$i" -eq 0 ] || join_node "$i"; done
    print_env
}

# For destroy: the data goes anyway, so no orderly shutdown (seconds per node on a loaded machine).
kill_node() {
    local pid_file
    pid_file="$(node_dir "$1")/rabbitmq.pid"
    if [ -s "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
        kill -KILL "$(cat "$pid_file")" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$(cat "$pid_file")" 2>/dev/null || return 0; sleep 0.1; done
    fi
}

stop_node() {
    local i=$1 pid_file
    pid_file="$(node_dir "$i")/rabbitmq.pid"
    ctl "$i" -q stop >/dev/null 2>&1 && return
    # Not answering (half started, or SIGSTOPped): end it by its own pid, never by name.
    if [ -s "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
        kill -CONT "$(cat "$pid_file")" 2>/dev/null || true
        kill -KILL "$(cat "$pid_file")" 2>/dev/null || true
    fi
}

status() {
    local running=0
    for i in "${!NODES[@]}"; do
        if is_up "$i"; then
            echo "${NODES[$i]}@localhost: running (AMQP ${AMQP_PORTS[$i]}, distribution ${DIST_PORTS[$i]})"
            running=$((running + 1))
        else
            echo "${NODES[$i]}@localhost: not running"
        fi
    done
    for i in "${!NODES[@]}"; do
        if is_up "$i"; then
            # (A node may go down between two commands: say so rather than fail on empty output.)
            ctl "$i" -q cluster_status --formatter json 2>/dev/null | python3 -c '
import json, sys
try:
    s = json.load(sys.stdin)
    print("cluster members:", *s["disk_nodes"], "\nrunning:", *s["running_nodes"])
except ValueError:
    print("cluster status: no answer")'
            for vhost in $(ctl "$i" -s list_vhosts name); do
                echo "queues of vhost $vhost (name type leader members online):"
                ctl "$i" -s list_queues -p "$vhost" name type leader members online
            done
            break
        fi
    done
    [ "$running" -eq "${#NODES[@]}" ]
}

case "${1:-}" in
    start) start ;;
    env) print_env ;;
    status) status ;;
    stop) for i in "${!NODES[@]}"; do stop_node "$i"; done ;;
    destroy)
        for i in "${!NODES[@]}"; do [ -d "$(node_dir "$i")" ] && kill_node "$i"; done
        rm -rf "$BASE" ;;
    *) echo "usage: $0 start|stop|status|destroy|env" >&2; exit 2 ;;
esac
