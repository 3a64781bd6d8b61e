"""The timeouts the services add themselves to every DSN and broker URL, so that a silent server (no reset ever
arrives) is noticed in seconds whatever an operator wrote; an operator's own value always wins."""
import contextlib
import dataclasses

import pytest
from psycopg2.extensions import parse_dsn

from common.broker.urls import with_heartbeat
from common.db.database import Database
from common.db.pg_hosts import single_host_dsns, with_timeouts
from common.runtime.config import ConfigurationError, DbTimeouts, load_db_timeouts, rabbitmq_heartbeat, read_env_file

TIMEOUTS = DbTimeouts()
LIBPQ = {"keepalives": "1", "keepalives_idle": "5", "keepalives_interval": "2", "keepalives_count": "3",
         "tcp_user_timeout": "10000", "connect_timeout": "3"}
SERVER = "-c idle_in_transaction_session_timeout=10000 -c lock_timeout=3000"


@pytest.fixture(autouse=True)
def no_libpq_environment(monkeypatch):
    for variable in ("PGCONNECT_TIMEOUT", "PGOPTIONS"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize("dsn", ["postgresql://u:p@db:5432/orders", "host=db port=5432 dbname=orders user=u"])
def test_every_timeout_is_added_to_a_dsn_that_sets_none(dsn):
    params = parse_dsn(with_timeouts(dsn, TIMEOUTS))
    assert {key: params[key] for key in LIBPQ} == LIBPQ
    assert params["options"] == SERVER
    assert (params["host"], params["dbname"], params["user"]) == ("db", "orders", "u")


def test_each_host_of_a_multi_host_dsn_gets_the_timeouts():
    dsn = "postgresql://u@h1:5441,h2:5442/orders?target_session_attrs=read-write&sslmode=disable"
    singles = [parse_dsn(single) for single in single_host_dsns(with_timeouts(dsn, TIMEOUTS))]
    assert [(params["host"], params["port"]) for params in singles] == [("h1", "5441"), ("h2", "5442")]
    for params in singles:
        assert {key: params[key] for key in LIBPQ} == LIBPQ
        assert (params["options"], params["sslmode"]) == (SERVER, "disable")


def test_the_operator_s_libpq_values_are_kept():
    dsn = "postgresql://u@db/orders?keepalives_idle=30&connect_timeout=10&tcp_user_timeout=0"
    params = parse_dsn(with_timeouts(dsn, TIMEOUTS))
    assert (params["keepalives_idle"], params["connect_timeout"], params["tcp_user_timeout"]) == ("30", "10", "0")
    assert (params["keepalives_interval"], params["keepalives_count"]) == ("2", "3")


def test_a_connect_timeout_from_libpq_s_environment_is_kept(monkeypatch):
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "7")
    assert "connect_timeout" not in parse_dsn(with_timeouts("postgresql://u@db/orders", TIMEOUTS))


def test_server_settings_join_the_operator_s_options_and_never_replace_one_given():
    dsn = "host=db dbname=orders options='-c search_path=shop --lock-timeout=1s'"
    options = parse_dsn(with_timeouts(dsn, TIMEOUTS))["options"]
    assert options == "-c search_path=shop --lock-timeout=1s -c idle_in_transaction_session_timeout=10000"


def test_options_from_libpq_s_environment_are_carried_over_not_dropped(monkeypatch):
    monkeypatch.setenv("PGOPTIONS", "-c statement_timeout=0 -c lock_timeout=500")
    options = parse_dsn(with_timeouts("postgresql://u@db/orders", TIMEOUTS))["options"]
    assert options == "-c statement_timeout=0 -c lock_timeout=500 -c idle_in_transaction_session_timeout=10000"


def test_a_dsn_that_sets_everything_is_returned_unchanged():
    dsn = with_timeouts("postgresql://u@db/orders", TIMEOUTS)
    assert with_timeouts(dsn, TIMEOUTS) == dsn


def test_env_s_values_are_the_code_s_defaults():
    assert load_db_timeouts(read_env_file()) == DbTimeouts()
    assert rabbitmq_heartbeat(read_env_file()) == rabbitmq_heartbeat({}) == 3


def test_every_db_setting_reaches_its_field():
    env = {"DB_CONNECT_TIMEOUT": "4", "DB_KEEPALIVES_IDLE": "6", "DB_KEEPALIVES_INTERVAL": "3",
           "DB_KEEPALIVES_COUNT": "4", "DB_TCP_USER_TIMEOUT_MS": "9000", "DB_STATEMENT_TIMEOUT": "2.5",
           "DB_COMMIT_TIMEOUT": "12", "DB_IDLE_IN_TRANSACTION_TIMEOUT": "0.5", "DB_LOCK_TIMEOUT": "0.25"}
    assert dataclasses.asdict(load_db_timeouts(env)) == {
        "connect": 4, "keepalives_idle": 6, "keepalives_interval": 3, "keepalives_count": 4,
        "tcp_user_timeout": 9000, "statement": 2.5, "commit": 12.0, "idle_in_transaction": 0.5, "lock": 0.25}
    assert load_db_timeouts(env).server() == {"idle_in_transaction_session_timeout": 500, "lock_timeout": 250}


@pytest.mark.parametrize("key, value, says", [
    ("DB_CONNECT_TIMEOUT", "1", "DB_CONNECT_TIMEOUT must be at least 2"),
    ("DB_KEEPALIVES_COUNT", "2.5", "DB_KEEPALIVES_COUNT must be a whole number"),
    ("DB_STATEMENT_TIMEOUT", "soon", "DB_STATEMENT_TIMEOUT must be a number"),
    ("DB_COMMIT_TIMEOUT", "nan", "DB_COMMIT_TIMEOUT must be at least"),
    ("DB_LOCK_TIMEOUT", "-1", "DB_LOCK_TIMEOUT must be at least"),
    ("DB_LOCK_TIMEOUT", "5", "DB_LOCK_TIMEOUT (5.0) must be below DB_STATEMENT_TIMEOUT (5.0)"),
])
def test_a_bad_db_timeout_is_refused_by_name(key, value, says):
    with pytest.raises(ConfigurationError, match=says.replace("(", r"\(").replace(")", r"\)")):
        load_db_timeouts({key: value})


def test_a_heartbeat_is_added_to_every_node_url_without_one():
    urls = "amqp://u:p@r1:5672/shop,amqps://u:p@r2:5671/shop?cafile=/etc/shop/ca.crt, amqp://r3"
    assert with_heartbeat(urls, 3) == ("amqp://u:p@r1:5672/shop?heartbeat=3,"
                                       "amqps://u:p@r2:5671/shop?cafile=/etc/shop/ca.crt&heartbeat=3,"
                                       "amqp://r3?heartbeat=3")


def test_a_node_s_own_heartbeat_is_kept():
    urls = "amqp://r1:5672/?heartbeat=10,amqp://r2:5672/?channel_max=64"
    assert with_heartbeat(urls, 3) == "amqp://r1:5672/?heartbeat=10,amqp://r2:5672/?channel_max=64&heartbeat=3"


@pytest.mark.parametrize("urls, seconds, says", [
    ("amqp://r1/", 0, "at least 1 s"),
    ("amqp://r1/?heartbeat=soon", 3, "heartbeat='soon' in a RABBITMQ_URL entry for r1"),
])
def test_a_heartbeat_that_cannot_work_is_refused(urls, seconds, says):
    with pytest.raises(ValueError, match=says):
        with_heartbeat(urls, seconds)


@pytest.mark.parametrize("value", ["0", "-3", "2.5", "often"])
def test_a_rabbitmq_heartbeat_setting_below_a_second_or_not_whole_is_refused(value):
    with pytest.raises(ConfigurationError, match="RABBITMQ_HEARTBEAT must be a whole number of seconds"):
        rabbitmq_heartbeat({"RABBITMQ_HEARTBEAT": value})


class RecordingCursor:
    """The statements a transaction sent, each with the bound it was given (None: the pool's statement bound)."""

    def __init__(self):
        self.sent = []

    async def execute(self, sql, params=None, *, timeout=None):
        self.sent.append((sql, timeout))


class OneConnectionPool:
    def __init__(self, cursor):
        self.cursor_ = cursor

    @contextlib.asynccontextmanager
    async def acquire(self):
        yield self

    @contextlib.asynccontextmanager
    async def cursor(self):
        yield self.cursor_


@pytest.mark.gen_test
async def test_commit_gets_its_own_bound_and_every_other_statement_the_pool_s():
    cursor = RecordingCursor()
    db = Database(OneConnectionPool(cursor), timeouts=DbTimeouts(statement=5, commit=15))

    async def write(cur):
        await cur.execute("UPDATE accounts SET balance = balance + 1 WHERE user_id = 1")
    await db.run(write)
    assert cursor.sent == [("BEGIN; UPDATE accounts SET balance = balance + 1 WHERE user_id = 1", None),
                           ("COMMIT", 15)]
