# Sourced by scripts/private-brokers.sh and scripts/rabbitmq-cluster.sh: the files that make a RabbitMQ node of
# Debian's rabbitmq-server private (its own name, ports and directories beside the machine's default node).

# write_node_files DIR NODENAME AMQP_PORT DIST_PORT ENV_FILE
# RabbitMQ's scripts read every node setting from ENV_FILE (RABBITMQ_CONF_ENV_FILE), so rabbitmqctl and
# rabbitmq-server pointed at it address that node and no other.
write_node_files() {
    local dir=$1 name=$2 amqp_port=$3 dist_port=$4 env_file=$5
    mkdir -p "$dir/mnesia" "$dir/log"
    # Its own config file: the machine's /etc/rabbitmq/rabbitmq.conf pins the listener to 5672.
    echo "listeners.tcp.local = 127.0.0.1:$amqp_port" > "$dir/rabbitmq.conf"
    : > "$dir/enabled_plugins"  # no management plugin: its listener (15672) would clash with the default node's
    cat > "$env_file" <<END
NODENAME=$name@localhost
NODE_PORT=$amqp_port
DIST_PORT=$dist_port
CONFIG_FILE=$dir/rabbitmq.conf
MNESIA_BASE=$dir/mnesia
LOG_BASE=$dir/log
ENABLED_PLUGINS_FILE=$dir/enabled_plugins
PID_FILE=$dir/rabbitmq.pid
END
    chown -R rabbitmq:rabbitmq "$dir"
}
