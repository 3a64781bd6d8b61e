"""`python -m bench.floors`: what the building blocks cost in CPU on this machine, each on its own.

An order crosses two HTTP servers and one HTTP client (gateway, Order Service), a few database round trips
and transactions, and two confirmed publishes and two consumed messages. Measured alone, the cheapest each of
those can be with these libraries gives a floor under the CPU an order needs, whatever the services do."""
import asyncio
import resource
import secrets
import subprocess
import sys
import time

import aio_pika
import aiopg

from bench.table import Row, render
from bench.tools import find, wrk
from harness.infra import INFRA
from harness.stack import cpu_seconds as process_cpu_seconds
from harness.stack import free_port

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


async def broker_us(messages):
    """CPU per confirmed persistent publish (200 at a time, as the relays do) and per consumed message
    (acked 100 at a time, as the consumers do), on a vhost of its own."""
    vhost = f"shop_floors_{secrets.token_hex(4)}"
    INFRA.rabbitmqctl("add_vhost", vhost)
    INFRA.rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        connection = await aio_pika.connect_robust(INFRA.amqp_url(vhost))
        async with connection:
            publisher = await connection.channel(publisher_confirms=True)
            await publisher.declare_queue("floors", durable=True)

            async def publish():
                await publisher.default_exchange.publish(
                    aio_pika.Message(b'{"order_id": 1}', delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key="floors")
            publish_us = await per_call_us(messages, publish, concurrency=200)

            consumer = await connection.channel()
            await consumer.set_qos(prefetch_count=256)
            received, done = [], asyncio.Event()

            async def on_message(message):
                received.append(message)
                if len(received) % 100 == 0:
                    await message.ack(multiple=True)
                if len(received) == messages:
                    done.set()
            started = cpu_seconds()
            await (await consumer.get_queue("floors")).consume(on_message)
            await done.wait()
            return publish_us, (cpu_seconds() - started) * 1e6 / messages
    finally:
        INFRA.rabbitmqctl("delete_vhost", vhost)


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
    publish, consume = asyncio.run(broker_us(messages))
    rows += [Row("aio-pika confirmed persistent publish (200 at a time)", f"{publish:.0f} µs"),
             Row("aio-pika consume, acked 100 at a time", f"{consume:.0f} µs")]
    print(render(rows))


if __name__ == "__main__":
    main()
