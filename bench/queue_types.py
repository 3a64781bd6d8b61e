"""`python -m bench.queue_types [--messages N] [--rounds R]`: the price of quorum queues and of a cluster, at
the broker, in one run: confirmed persistent publishes (200 in flight, as the relays publish), one publish at
a time (a lone order's latency), and consuming (acked 100 at a time, as the consumers do), on

    the single node (harness.infra: the machine's default node or SHOP_TEST_AMQP), classic and quorum queues
    the cluster of scripts/rabbitmq-cluster.sh (started beforehand), quorum queues

each on a vhost of its own, rounds interleaved so that a busy moment of the machine hits every setup alike.
Prints a Markdown table with each figure as a ratio to the single node's classic queue."""
import argparse
import asyncio
import dataclasses
import secrets
import statistics
import subprocess
import time

import aio_pika

from bench.table import Row, ms, per_s, render
from common.broker.amqp_nodes import connect_nodes
from common.broker.queues import declare_queue
from harness.infra import INFRA, Infra
from harness.stack import ROOT

BODY = b'{"order_id": 1234567, "user_id": 42, "amount": "10.00"}'


def script_infra(script, *fields):
    """INFRA with `fields` replaced by what `scripts/SCRIPT env` prints (the script honours its own variables,
    e.g. RABBIT_CLUSTER_* or PG_HA_*, so it names the same cluster it started)."""
    printed = subprocess.run([str(ROOT / "scripts" / script), "env"], capture_output=True,
                             text=True, check=True).stdout
    pairs = [line.removeprefix("export ").split("=", 1) for line in printed.splitlines() if line.startswith("export ")]
    found = Infra.from_env({name: value.strip("'") for name, value in pairs})
    return dataclasses.replace(INFRA, **{field: getattr(found, field) for field in fields})


def cluster_infra():
    return script_infra("rabbitmq-cluster.sh", "amqp_base", "rabbitmq_env", "rabbitmq_nodes")


async def measure(urls, queue_type, messages):
    """(publishes/s with 200 in flight, median ms of one publish at a time, consumed/s)."""
    connection = await connect_nodes(urls)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue_name = f"bench_{secrets.token_hex(3)}"
        await declare_queue(channel, queue_name, queue_type)
        window = asyncio.Semaphore(200)

        async def publish():
            async with window:
                await channel.default_exchange.publish(
                    aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue_name)
        started = time.perf_counter()
        await asyncio.gather(*(publish() for _ in range(messages)))
        publish_rate = messages / (time.perf_counter() - started)
        one_at_a_time = []
        for _ in range(100):
            started = time.perf_counter()
            await publish()
            one_at_a_time.append((time.perf_counter() - started) * 1000)
        consume_rate = await consume(connection, queue_name, messages + 100)
    return publish_rate, statistics.median(one_at_a_time), consume_rate


async def consume(connection, queue_name, count):
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=256)
    received, done = 0, asyncio.Event()

    async def on_message(message):
        nonlocal received
        received += 1
        if received % 100 == 0 or received == count:
            await message.ack(multiple=True)
        if received == count:
            done.set()
    started = time.perf_counter()
    await (await channel.get_queue(queue_name)).consume(on_message)
    await done.wait()
    return count / (time.perf_counter() - started)


def with_vhost(infra, action):
    # Vhosts are cluster-wide: on a cluster, any node that answers will do.
    ctl = infra.cluster.ctl if infra.cluster else infra.rabbitmqctl
    vhost = f"shop_bench_qt_{secrets.token_hex(4)}"
    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        return action(infra.amqp_url(vhost).split(","))
    finally:
        ctl("delete_vhost", vhost)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.queue_types", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=3000, help="messages per round and setup")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    setups = [("single node, classic", INFRA, "classic"), ("single node, quorum", INFRA, "quorum"),
              ("3-node cluster, quorum", cluster_infra(), "quorum")]
    results = {name: [] for name, _, _ in setups}
    for _ in range(args.rounds):
        for name, infra, queue_type in setups:
            results[name].append(with_vhost(
                infra, lambda urls, queue_type=queue_type: asyncio.run(measure(urls, queue_type, args.messages))))
    medians = {name: [statistics.median(run[i] for run in runs) for i in range(3)] for name, runs in results.items()}
    base = medians[setups[0][0]]
    rows = []
    for name, (publish_rate, latency, consume_rate) in medians.items():
        rows += [Row(f"{name}: confirmed publishes, 200 in flight", per_s(publish_rate),
                     f"{publish_rate / base[0]:.2f}×"),
                 Row(f"{name}: one publish at a time (median)", ms(latency), f"{latency / base[1]:.2f}×"),
                 Row(f"{name}: consumed, acked 100 at a time", per_s(consume_rate), f"{consume_rate / base[2]:.2f}×")]
    print(render(rows))  # the baseline column: the ratio to the single node's classic queue


if __name__ == "__main__":
    main()
