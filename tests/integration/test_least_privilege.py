"""Least privilege, for real: both services run in-process with their own PostgreSQL roles and broker users, made by
`ops.provision` (through `harness.credentials`) on databases and a vhost of this module only. Forged messages are
refused, each service's credentials fail on the other's database and on anything its queues do not need, the
operator's replay is taken, and provisioning is idempotent and hands over a database the superuser created."""
import asyncio
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal

import aio_pika
import psycopg2
import pytest
from aio_pika.exceptions import ProbableAuthenticationError
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed, InvalidFrameError

from common.broker.messages import ORDER_REQUESTS, PAYMENT_RESULTS, PaymentRequest, PaymentResult
from common.broker.queues import declare_queue
from common.db.database import Database, schema_section
from common.runtime.config import ConfigurationError, load_settings
from harness.credentials import RunCredentials
from harness.infra import INFRA, InfraError
from harness.invariants import query
from ops.dead_letters.store import DeadLetterQueue
from order_svc import repo as order_repo
from order_svc.bootstrap import OrderService
from payment_svc.bootstrap import PaymentService
from tests.conftest import eventually
from tests.integration.conftest import running, stopped
from tests.integration.http import request

# A DSN a service is given for the other's database, which it never uses: it holds no credentials of the other's.
NOT_YOURS = "postgresql://nobody@127.0.0.1:1/not_yours"


@dataclass
class Provisioned:
    credentials: RunCredentials
    databases: dict
    vhost: str

    def dsn(self, who, database=None):
        return self.credentials.dsn(INFRA, who, database or self.databases[who])

    def amqp_url(self, who):
        return self.credentials.amqp_url(INFRA, who, self.vhost)

    @property
    def admin_url(self):
        return INFRA.amqp_url(self.vhost)

    def user(self, who):
        return self.credentials.name(who)

    def settings(self, who):
        env = {"ORDER_DB_DSN": self.dsn("order") if who == "order" else NOT_YOURS,
               "PAYMENT_DB_DSN": self.dsn("payment") if who == "payment" else NOT_YOURS,
               "RABBITMQ_URL": self.amqp_url(who), **self.credentials.env(), "LOG_LEVEL": "WARNING",
               "AUTH_MODE": "off", "ORDER_SVC_PORT": "0", "PAYMENT_SVC_PORT": "0", "ORDER_SVC_ADMIN_PORT": "0",
               "PAYMENT_SVC_ADMIN_PORT": "0"}
        return load_settings(env)


@pytest.fixture(scope="module")
def provisioned():
    run_id = f"shop_lp_{secrets.token_hex(4)}"
    databases = {"order": f"{run_id}_orders", "payment": f"{run_id}_payments"}
    credentials = RunCredentials(run_id)
    try:
        credentials.provision(INFRA, databases, run_id)
        yield Provisioned(credentials, databases, run_id)
    finally:
        for database in databases.values():
            INFRA.drop_database(database)
        INFRA.rabbitmqctl("delete_vhost", run_id)
        credentials.drop(INFRA)


@pytest.fixture
def order_service(io_loop, provisioned):
    service = running(io_loop, OrderService(provisioned.settings("order")))
    yield service
    stopped(io_loop, service)


@pytest.fixture
def payment_service(io_loop, provisioned):
    service = running(io_loop, PaymentService(provisioned.settings("payment")))
    yield service
    stopped(io_loop, service)


async def publish(url, queue, body, message_id, user_id=None):
    """Publish one persistent message through the default exchange as the user of `url`, confirmed."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(body, message_id=message_id, user_id=user_id,
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue, timeout=10)
    finally:
        await connection.close()


async def dead_letter(provisioned, queue, message_id):
    """Wait until `message_id` is in `queue`'s dead letters (read as the operator); returns it."""
    found = []

    async def there():
        dlq = await DeadLetterQueue.open(provisioned.amqp_url("operator"), queue)
        try:
            found[:] = [letter for letter in await dlq.take_all() if letter.id == message_id]
        finally:
            await dlq.close()
        assert len(found) == 1
    await eventually(there, timeout=20)
    return found[0]


async def place(service, user_id, amount=5):
    code, body = await request(service.port, "POST", "/orders", {"user_id": user_id, "amount": amount})
    assert code == 201, body
    return body["order_id"]


async def status_of(service, order_id):
    code, body = await request(service.port, "GET", f"/orders/{order_id}")
    assert code == 200, body
    return body["order"]["status"]


def result(order_id, status="FINISHED"):
    return PaymentResult(order_id, status).encode()


@pytest.mark.gen_test(timeout=60)
async def test_services_with_their_own_roles_and_users_create_their_tables_and_settle_an_order(
        provisioned, order_service, payment_service):
    user_id = secrets.randbelow(2**40) + 1
    assert (await request(payment_service.port, "POST", "/payments", {"user_id": user_id}))[0] == 201
    assert (await request(payment_service.port, "PUT", f"/payments/{user_id}", {"amount": 10}))[0] == 200
    order_id = await place(order_service, user_id, 4)

    async def finished():
        assert await status_of(order_service, order_id) == "FINISHED"
    await eventually(finished, timeout=20)
    for who, tables in (("order", {"orders", "outbox_os", "idempotency_keys"}),
                        ("payment", {"accounts", "inbox", "outbox_ps", "account_movements", "idempotency_keys"})):
        owned = query(provisioned.dsn(who), "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'")
        assert dict(owned) == dict.fromkeys(tables, provisioned.user(who)), who
        assert query(provisioned.dsn(who), "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
                                           "WHERE rolname = current_user") == [(False, False, False)]


@pytest.mark.gen_test(timeout=60)
async def test_a_result_published_with_the_order_service_s_user_is_dead_lettered_and_the_order_stays_new(
        provisioned, order_service):
    order_id = await place(order_service, 1)  # no Payments Service runs: nothing settles it
    order_user = provisioned.user("order")
    # The Order Service's user may write to the default exchange (it must, for its requests): the broker takes it.
    await publish(provisioned.amqp_url("order"), PAYMENT_RESULTS, result(order_id), f"forged-{order_id}", order_user)
    letter = await dead_letter(provisioned, PAYMENT_RESULTS, f"forged-{order_id}")
    assert letter.info.reason == (f"published by '{order_user}'; outbox_ps takes messages from "
                                  f"'{provisioned.user('operator')}' or '{provisioned.user('payment')}' only")
    assert letter.info.refused_publisher == order_user
    assert await status_of(order_service, order_id) == "NEW"

    payment_user = provisioned.user("payment")
    await publish(provisioned.amqp_url("payment"), PAYMENT_RESULTS, result(order_id), f"true-{order_id}", payment_user)

    async def finished():
        assert await status_of(order_service, order_id) == "FINISHED"
    await eventually(finished)


@pytest.mark.gen_test(timeout=60)
async def test_a_result_without_a_user_id_or_from_any_other_user_is_refused_and_an_unknown_user_cannot_log_in(
        provisioned, order_service):
    order_id = await place(order_service, 1)
    await publish(provisioned.amqp_url("payment"), PAYMENT_RESULTS, result(order_id), f"anonymous-{order_id}")
    letter = await dead_letter(provisioned, PAYMENT_RESULTS, f"anonymous-{order_id}")
    assert letter.info.reason.startswith("published without a user_id; outbox_ps takes messages from")
    # The harness's administrator may publish anywhere, yet is not a publisher of results.
    await publish(provisioned.admin_url, PAYMENT_RESULTS, result(order_id), f"admin-{order_id}", INFRA.amqp_user)
    letter = await dead_letter(provisioned, PAYMENT_RESULTS, f"admin-{order_id}")
    assert letter.info.refused_publisher == INFRA.amqp_user
    assert await status_of(order_service, order_id) == "NEW"
    with pytest.raises(ProbableAuthenticationError):
        await aio_pika.connect(INFRA.amqp_url(provisioned.vhost, user="nobody", password="guessed"))


@pytest.mark.gen_test(timeout=60)
async def test_a_payment_request_published_with_the_payments_user_is_refused_and_debits_nothing(
        provisioned, payment_service):
    user_id = secrets.randbelow(2**40) + 1
    await request(payment_service.port, "POST", "/payments", {"user_id": user_id})
    await request(payment_service.port, "PUT", f"/payments/{user_id}", {"amount": 10})
    order_id = secrets.randbelow(2**40) + 1
    await publish(provisioned.amqp_url("payment"), ORDER_REQUESTS, PaymentRequest(order_id, user_id, Decimal(3))
                  .encode(), f"forged-{order_id}", provisioned.user("payment"))
    letter = await dead_letter(provisioned, ORDER_REQUESTS, f"forged-{order_id}")
    assert letter.info.refused_publisher == provisioned.user("payment")
    code, body = await request(payment_service.port, "GET", f"/payments/{user_id}")
    assert (code, body["account"]["balance"]) == (200, 10)

    async def stored(cur):
        await cur.execute("SELECT count(*) FROM inbox WHERE order_id = %s", (order_id,))
        return (await cur.fetchone())[0]
    assert await payment_service.db.run(stored) == 0


@pytest.mark.gen_test(timeout=60)
async def test_the_broker_refuses_a_publish_whose_user_id_is_not_the_connection_s_user(provisioned):
    for claimed in (provisioned.user("payment"), "nobody"):
        with pytest.raises(ChannelPreconditionFailed, match="user_id property set to"):
            await publish(provisioned.amqp_url("order"), PAYMENT_RESULTS, result(1), "lie", claimed)


def test_each_service_role_cannot_connect_to_the_other_s_database_nor_create_one(provisioned):
    for who, other in (("order", "payment"), ("payment", "order")):
        with pytest.raises(psycopg2.OperationalError, match="CONNECT privilege"):
            psycopg2.connect(provisioned.dsn(who, provisioned.databases[other])).close()
        conn = psycopg2.connect(provisioned.dsn(who))
        conn.autocommit = True
        try:
            with conn.cursor() as cur, pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(f'CREATE DATABASE "{provisioned.vhost}_extra"')
        finally:
            conn.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_service_whose_database_is_missing_and_may_not_create_it_says_to_provision_it(provisioned):
    missing = f"{provisioned.vhost}_missing"
    with pytest.raises(ConfigurationError, match=f"database {missing} does not exist and role "
                                                 f"{provisioned.user('order')} may not create it: provision it first"):
        await Database.connect(provisioned.dsn("order", missing), "order_svc", 1)


async def refused(url, action):
    """The error `action(channel)` ends in, as the user of `url` (None if it worked)."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await action(channel)
    except (ChannelAccessRefused, ChannelPreconditionFailed) as exc:
        return exc
    finally:
        await connection.close()
    return None


def get_one(queue):
    async def take(channel):
        got = await (await channel.get_queue(queue, ensure=False)).get(fail=False)
        if got:
            await got.nack(requeue=True)
    return take


def through(exchange_name, user_id):
    async def publish_there(channel):
        exchange = await channel.get_exchange(exchange_name, ensure=False)
        await exchange.publish(aio_pika.Message(b"{}", user_id=user_id), routing_key=ORDER_REQUESTS)
    return publish_there


@pytest.mark.gen_test(timeout=90)
async def test_each_broker_user_may_use_its_queues_and_nothing_else(provisioned, order_service):
    # order_service has declared the queues: a service user's declare (dead-letter arguments and all) works.
    for who in ("order", "payment"):
        url = provisioned.amqp_url(who)
        for queue in (ORDER_REQUESTS, PAYMENT_RESULTS):
            assert await refused(url, lambda channel, queue=queue: declare_queue(channel, queue)) is None, who
            assert await refused(url, get_one(queue)) is None, who  # both may read both (module docstring)
        for queue in (f"{ORDER_REQUESTS}.dead", f"{PAYMENT_RESULTS}.dead"):
            assert isinstance(await refused(url, get_one(queue)), ChannelAccessRefused), (who, queue)
        assert isinstance(await refused(url, lambda channel: channel.declare_queue("other", durable=True)),
                          ChannelAccessRefused), who
        assert isinstance(await refused(url, lambda channel: channel.declare_queue(exclusive=True)),
                          ChannelAccessRefused), who

        through_amq_direct = through("amq.direct", provisioned.user(who))
        assert isinstance(await refused(url, through_amq_direct), ChannelAccessRefused), who
        # RabbitMQ answers the open of a vhost the user has no permissions on with Connection.Close
        # (NOT_ALLOWED); aiormq 7.2.4 reports that as an unexpected frame and drops the reply text.
        with pytest.raises(InvalidFrameError, match="got <Connection.Close"):
            await aio_pika.connect(INFRA.amqp_url("", user=provisioned.user(who),
                                                  password=provisioned.credentials.passwords[who]))
    operator = provisioned.amqp_url("operator")
    for queue in (ORDER_REQUESTS, PAYMENT_RESULTS):
        assert isinstance(await refused(operator, get_one(queue)), ChannelAccessRefused), queue
        assert isinstance(await refused(operator, lambda channel, queue=queue: declare_queue(channel, queue)),
                          ChannelAccessRefused), queue


async def dead_letters_cli(url, *args):
    env = {**os.environ, "RABBITMQ_URL": url}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "ops.dead_letters", *args, env=env,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode, out.decode(), err.decode()


@pytest.mark.gen_test(timeout=90)
async def test_the_operator_s_replay_is_taken_and_a_dead_letter_refused_for_its_publisher_is_never_replayed(
        provisioned, order_service, monkeypatch):
    order_id = await place(order_service, 1)
    forged, legit = f"forged-{order_id}", f"legit-{order_id}"
    await publish(provisioned.amqp_url("order"), PAYMENT_RESULTS, result(order_id, "FINISHED"), forged,
                  provisioned.user("order"))
    await dead_letter(provisioned, PAYMENT_RESULTS, forged)

    async def crash(*_args):
        raise RuntimeError("simulated bug")
    monkeypatch.setattr(order_repo.PostgresOrders, "finalize_orders", crash)
    await publish(provisioned.amqp_url("payment"), PAYMENT_RESULTS, result(order_id, "CANCELLED"), legit,
                  provisioned.user("payment"))
    assert (await dead_letter(provisioned, PAYMENT_RESULTS, legit)).info.reason == "processing failed twice"
    monkeypatch.undo()  # the fix

    code, out, err = await dead_letters_cli(provisioned.amqp_url("operator"), "replay", PAYMENT_RESULTS, "--all")
    assert code == 0, err
    assert f"replayed {legit} to {PAYMENT_RESULTS}" in out and f"replayed {forged}" not in out
    assert f"left {forged}: refused for its publisher (user_id '{provisioned.user('order')}')" in err

    async def cancelled():
        assert await status_of(order_service, order_id) == "CANCELLED"
    await eventually(cancelled)
    assert (await dead_letter(provisioned, PAYMENT_RESULTS, forged)).info.refused_publisher  # still there
    code, _, err = await dead_letters_cli(provisioned.amqp_url("operator"), "replay", PAYMENT_RESULTS, "--id", forged)
    assert code == 2 and "may be forged: it is never replayed; purge it" in err
    code, _, err = await dead_letters_cli(provisioned.amqp_url("payment"), "list", PAYMENT_RESULTS)
    assert (code, err) == (1, f"error: RabbitMQ refuses user {provisioned.user('payment')} to read outbox_ps.dead: "
                              "run the command with the operator user's credentials (BROKER_OPERATOR_USER)\n")


def provision_cli(env, *args):
    """`python -m ops.provision ARGS` as an operator runs it, with `env`, against the harness's servers."""
    rabbit = {"RABBITMQ_CONF_ENV_FILE": INFRA.rabbitmq_env} if INFRA.rabbitmq_env else {}
    return subprocess.run([sys.executable, "-m", "ops.provision", *args], env={**os.environ, **rabbit, **env},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def migration():
    """Names for a deployment from before least privilege, dropped afterwards: (run id, its inputs)."""
    run_id = f"shop_lpm_{secrets.token_hex(4)}"
    yield run_id
    for suffix in ("orders", "payments"):
        INFRA.drop_database(f"{run_id}_{suffix}")
    for who in ("order", "payment"):
        INFRA.drop_role(f"{run_id}_{who}")
    for command in (("delete_vhost", run_id), *(("delete_user", f"{run_id}_{who}") for who in ("order", "payment"))):
        try:
            INFRA.rabbitmqctl(*command)
        except InfraError:
            pass  # not made: the test failed before


def provisioning_env(run_id, payment_broker_password="pw-p1"):
    return {"ORDER_DB_DSN": INFRA.dsn(f"{run_id}_orders", f"{run_id}_order", "pw-o"),
            "PAYMENT_DB_DSN": INFRA.dsn(f"{run_id}_payments", f"{run_id}_payment", "pw-p"),
            "PG_ADMIN_DSN": INFRA.pg_admin_dsn,
            "ORDER_RABBITMQ_URL": INFRA.amqp_url(run_id, user=f"{run_id}_order", password="pw-o1"),
            "PAYMENT_RABBITMQ_URL": INFRA.amqp_url(run_id, user=f"{run_id}_payment",
                                                   password=payment_broker_password)}


def owners(dsn):
    return set(query(dsn, """
        SELECT pg_get_userbyid(relowner) FROM pg_class
         WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'S', 'i')
        UNION SELECT pg_get_userbyid(typowner) FROM pg_type WHERE typname = 'legacy_mood'
        UNION SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'legacy_fn'
        UNION SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"""))


@pytest.mark.gen_test(timeout=120)
async def test_provisioning_is_idempotent_and_hands_over_a_database_the_superuser_created(migration):
    run_id = migration
    orders = f"{run_id}_orders"
    INFRA.admin_sql(f'CREATE DATABASE "{orders}"')
    admin = INFRA.dsn(orders)
    # The service's tables as the superuser made them, and more.
    INFRA.admin_sql(schema_section("shared") + schema_section("order_svc") +
                    "CREATE TYPE legacy_mood AS ENUM ('ok'); CREATE SEQUENCE legacy_seq; "
                    "CREATE FUNCTION legacy_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'", dsn=admin)
    assert owners(admin) == {("postgres",)}

    env = provisioning_env(run_id)
    done = provision_cli({**env, "ORDER_DB_DSN": INFRA.dsn(orders, "postgres", "x")})
    assert done.returncode == 2 and "role postgres is a superuser" in done.stderr, done.stderr
    done = provision_cli(env)
    assert done.returncode == 0, done.stderr
    assert f"database {orders} handed over from postgres" in done.stdout
    assert f"database {run_id}_payments created" in done.stdout
    assert "objects of schema public handed over" in done.stdout
    assert not any(secret in done.stdout + done.stderr for secret in ("pw-o", "pw-p"))
    role_dsn = INFRA.dsn(orders, f"{run_id}_order", "pw-o")
    assert owners(admin) == {(f"{run_id}_order",)}
    # The service migrates what it now owns (ALTER TABLE needs the owner), and more besides.
    db = await Database.connect(role_dsn, "order_svc", 1)
    await db.close()
    query(role_dsn, "ALTER TABLE orders ADD COLUMN IF NOT EXISTS later INT; SELECT 1")
    assert query(admin, "SELECT has_database_privilege('public', current_database(), 'CONNECT')") == [(False,)]

    again = provision_cli(provisioning_env(run_id, payment_broker_password="pw-p2"))
    assert again.returncode == 0, again.stderr
    assert f"database {orders} kept" in again.stdout and "handed over" not in again.stdout
    new = await aio_pika.connect(INFRA.amqp_url(run_id, user=f"{run_id}_payment", password="pw-p2"))
    await new.close()
    with pytest.raises(ProbableAuthenticationError):
        await aio_pika.connect(INFRA.amqp_url(run_id, user=f"{run_id}_payment", password="pw-p1"))
    assert query(admin, "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname LIKE %s "
                        "ORDER BY 1", (f"{run_id}%",)) == \
        [(f"{run_id}_order", False, False, False), (f"{run_id}_payment", False, False, False)]
