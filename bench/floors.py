"""`python -m bench.floors`: what the building blocks cost in CPU on this machine, each on its own.

An order crosses two HTTP servers and one HTTP client (gateway, Order Service), a few database round trips
and transactions, and two confirmed publishes and two consumed messages. Measured alone, the cheapest each of
those can be with these libraries gives a floor under the CPU an order needs, whatever the services do."""
import asyncio
import json
import resource
import secrets
import statistics
import subprocess
import sys
import time

import aio_pika
import aiopg
import aiormq

from bench.table import Row, render
from bench.tools import find, wrk
from harness.infra import INFRA
from harness.stack import cpu_seconds as process_cpu_seconds
from harness.stack import free_port

PACKED = 20  # entries per message in the packed rows (the default of ENTRIES_PER_MESSAGE)

HELLO_SERVER = """
import asyncio, sys, tornado.web
class Hello(tornado.web.RequestHandler):
    def get(self):
        self.write(b"hello")
async def main():
    tornado.web.Application([(r"/", Hello)], log_function=lambda handler: None).listen(int(sys.argv[1]))
    await asyncio.Event().wait()
asyncio.run(main())
"""


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tornado_request_ms(seconds):
    """CPU of a minimal Tornado server per request, under wrk with 16 keep-alive connections."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", HELLO_SERVER, str(port)])
    try:
        time.sleep(1.5)
        before = process_cpu_seconds(server.pid)
        result = wrk(f"http://127.0.0.1:{port}/", 16, seconds)
        return (process_cpu_seconds(server.pid) - before) * 1000 / result.requests, result.ok_per_second
    finally:
        server.terminate()
        server.wait()


async def per_call_us(calls, make_call, concurrency=1):
    started = cpu_seconds()
    for _ in range(0, calls, concurrency):
        await asyncio.gather(*(make_call() for _ in range(concurrency)))
    return (cpu_seconds() - started) * 1e6 / calls


async def database_us(calls):
    """CPU per `SELECT 1` round trip, and per BEGIN/SELECT/COMMIT transaction from the pool."""
    async with aiopg.create_pool(INFRA.dsn("postgres"), minsize=1, maxsize=1, enable_hstore=False) as pool:
        async with pool.acquire() as conn, conn.cursor() as cur:
            async def select():
                await cur.execute("SELECT 1")
            round_trip = await per_call_us(calls, select)

        async def transaction():
            async with pool.acquire() as conn, conn.cursor() as cur, cur.begin():
                await cur.execute("SELECT 1")
        return round_trip, await per_call_us(calls, transaction)


# One payment request as the services encode it, with the trace context a traced order carries: a message holds
# one such entry (today's format) or a JSON array of several (`common.broker.packing`).
ENTRY = {"order_id": 123456, "user_id": 4321, "amount": "10.00",
         "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


def body_of(entries):
    return json.dumps(ENTRY if entries == 1 else [ENTRY] * entries).encode()


async def aio_pika_publish(channel, queue, body, message_id):
    """What `common.broker.publisher.Publisher` did before packing: an `aio_pika.Message`, the robust channel's
    publish."""
    await channel.default_exchange.publish(
        aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, content_type="application/json",
                         message_id=message_id), routing_key=queue)


async def aiormq_publish(channel, queue, body, message_id):
    """The same publish on the robust channel's underlying aiormq channel, properties built directly."""
    underlay = await channel.get_underlay_channel()
    await underlay.basic_publish(body, routing_key=queue, properties=aiormq.spec.Basic.Properties(
        delivery_mode=2, content_type="application/json", message_id=message_id))


async def broker_us(connection, messages, entries, publish):
    """CPU per confirmed persistent publish of a message of `entries` entries (200 at a time, as the relays do),
    and per consumed message, decoded as JSON and acked 100 at a time (as the consumers do)."""
    queue = f"floors_{entries}_{publish.__name__}_{secrets.token_hex(2)}"
    body = body_of(entries)
    channel = await connection.channel(publisher_confirms=True)
    await channel.declare_queue(queue, durable=True)
    publish_us = await per_call_us(messages, lambda: publish(channel, queue, body, "1"), concurrency=200)

    consumer = await connection.channel()
    await consumer.set_qos(prefetch_count=256)
    received, done = [], asyncio.Event()

    async def on_message(message):
        received.append(json.loads(message.body))
        if len(received) % 100 == 0:
            await message.ack(multiple=True)
        if len(received) == messages:
            done.set()
    started = cpu_seconds()
    await (await consumer.get_queue(queue)).consume(on_message)
    await done.wait()
    consume_us = (cpu_seconds() - started) * 1e6 / messages
    await consumer.close()
    await channel.close()
    return publish_us, consume_us


async def broker_rows(messages, packed, rounds):
    """The broker rows: both publish calls with one entry per message, then `packed` entries per message; the
    variants take turns, `rounds` times, and each figure is the median of its rounds (the machine is shared)."""
    vhost = f"shop_floors_{secrets.token_hex(4)}"
    INFRA.rabbitmqctl("add_vhost", vhost)
    INFRA.rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    variants = [(entries, publish) for entries in (1, packed) for publish in (aio_pika_publish, aiormq_publish)]
    figures = {variant: [] for variant in variants}
    try:
        connection = await aio_pika.connect_robust(INFRA.amqp_url(vhost))
        async with connection:
            for _ in range(rounds):
                for entries, publish in variants:
                    figures[entries, publish].append(await broker_us(connection, messages, entries, publish))
    finally:
        INFRA.rabbitmqctl("delete_vhost", vhost)
    rows = []
    for entries, publish in variants:
        publish_us = statistics.median(p for p, _ in figures[entries, publish])
        call = "aio-pika publish" if publish is aio_pika_publish else "aiormq basic_publish"
        what = f"{entries} entr{'y' if entries == 1 else 'ies'} ({len(body_of(entries))} bytes)"
        rows.append(Row(f"{call}, confirmed, persistent, 200 at a time: message of {what}",
                        f"{publish_us:.0f} µs", f"{publish_us / entries:.1f} µs per entry"))
        if publish is aiormq_publish:  # consumed the same whichever way it was published: both rounds' figures
            consume_us = statistics.median(c for variant in ((entries, aio_pika_publish), (entries, publish))
                                           for _, c in figures[variant])
            rows.append(Row(f"aio-pika consume + json.loads, acked 100 at a time: message of {what}",
                            f"{consume_us:.0f} µs", f"{consume_us / entries:.1f} µs per entry"))
    return rows


def main(argv=None):
    smoke = "--smoke" in (argv if argv is not None else sys.argv[1:])
    calls, messages, seconds = (200, 400, 1) if smoke else (5000, 4000, 5)
    rows = []
    if find("wrk"):
        request_ms, rate = tornado_request_ms(seconds)
        rows.append(Row("Tornado server, one minimal request", f"{request_ms:.2f} ms", f"{rate:,.0f} requests/s"))
    round_trip, transaction = asyncio.run(database_us(calls))
    rows += [Row("aiopg round trip (SELECT 1)", f"{round_trip:.0f} µs"),
             Row("aiopg transaction (pool, BEGIN, SELECT 1, COMMIT)", f"{transaction:.0f} µs")]
    rows += asyncio.run(broker_rows(messages, PACKED, 1 if smoke else 3))
    print(render(rows))


if __name__ == "__main__":
    main()
