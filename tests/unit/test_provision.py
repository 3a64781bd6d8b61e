"""`ops.provision` without servers: the permissions say exactly what the queues need, the inputs are read as the
services read them, bad input is refused before anything is changed, and no password is printed."""
import json
import os
import re
import stat

import pytest

from common.broker.dead_letter_headers import dead_letter_queue
from common.broker.messages import ORDER_REQUESTS, PAYMENT_RESULTS
from common.broker.node_probe import PROBE_QUEUE
from ops.provision import ProvisioningError, rabbitmq
from ops.provision.__main__ import main, parse_args
from ops.provision.postgres import DatabaseOwner

QUEUES = (ORDER_REQUESTS, PAYMENT_RESULTS)
DEAD = tuple(dead_letter_queue(queue) for queue in QUEUES)
OTHERS = ("amq.direct", "amq.topic", "outbox_os.deadx", "xoutbox_os", "outbox_osx", "outbox_xs", "", "amq.gen-abc",
          "outbox_os.dead.dead", "node_probe.dead", "xnode_probe", "outbox_os|node_probe")


def allowed(regex, names):
    return [name for name in names if re.search(regex, name)]


def test_the_service_permissions_cover_the_four_queues_the_probe_queue_and_the_default_exchange_and_nothing_else():
    service = rabbitmq.SERVICE
    assert allowed(service.configure, QUEUES + DEAD + (PROBE_QUEUE,) + OTHERS + ("amq.default",)) == \
        list(QUEUES + DEAD + (PROBE_QUEUE,))
    assert allowed(service.read, QUEUES + DEAD + OTHERS + ("amq.default",)) == list(QUEUES)
    assert allowed(service.write, QUEUES + DEAD + OTHERS + ("amq.default",)) == ["amq.default"]


def test_the_operator_reads_the_dead_letter_queues_writes_the_default_exchange_and_configures_nothing():
    operator = rabbitmq.OPERATOR
    assert allowed(operator.configure, QUEUES + DEAD + OTHERS) == [""]  # RabbitMQ's idiom for "nothing"
    assert allowed(operator.read, QUEUES + DEAD + OTHERS + ("amq.default",)) == list(DEAD)
    assert allowed(operator.write, QUEUES + DEAD + OTHERS + ("amq.default",)) == ["amq.default"]


def test_a_broker_user_is_read_from_a_url_as_aiormq_reads_it():
    assert rabbitmq.BrokerUser.from_url("amqp://shop-order:p%40ss@rabbit:5672/") == \
        rabbitmq.BrokerUser("shop-order", "p@ss", "/")
    assert rabbitmq.BrokerUser.from_url("amqps://u:p@n1:5671/shop%2Fprod?cafile=/ca,amqps://u:p@n2/shop%2Fprod") \
        .vhost == "shop/prod"
    assert rabbitmq.BrokerUser.from_url("amqp://u:p@rabbit").vhost == "/"
    with pytest.raises(ProvisioningError, match="no user or no password"):
        rabbitmq.BrokerUser.from_url("amqp://shop-order@rabbit/")


def test_definitions_give_each_user_its_permissions_on_one_vhost_and_no_tags():
    order, payment = rabbitmq.BrokerUser("o", "1", "v"), rabbitmq.BrokerUser("p", "2", "v")
    defs = rabbitmq.definitions([(order, rabbitmq.SERVICE), (payment, rabbitmq.SERVICE)],
                                extra_permissions=[("admin", rabbitmq.Permissions(".*", ".*", ".*"))])
    assert defs["users"] == [{"name": "o", "password": "1", "tags": []}, {"name": "p", "password": "2", "tags": []}]
    assert defs["vhosts"] == [{"name": "v"}]
    assert [(p["user"], p["vhost"], p["read"]) for p in defs["permissions"]] == \
        [("o", "v", rabbitmq.SERVICE.read), ("p", "v", rabbitmq.SERVICE.read), ("admin", "v", ".*")]
    assert "1" not in rabbitmq.summary(defs) and "2" not in rabbitmq.summary(defs)


def test_definitions_refuse_a_shared_user_or_two_vhosts():
    with pytest.raises(ProvisioningError, match="must differ"):
        rabbitmq.definitions([(rabbitmq.BrokerUser("u", "1", "v"), rabbitmq.SERVICE)] * 2)
    with pytest.raises(ProvisioningError, match="different vhosts"):
        rabbitmq.definitions([(rabbitmq.BrokerUser("o", "1", "v"), rabbitmq.SERVICE),
                              (rabbitmq.BrokerUser("p", "1", "w"), rabbitmq.SERVICE)])


def test_a_database_owner_is_read_from_a_service_dsn():
    assert DatabaseOwner.from_dsn("postgresql://shop-order:pw@h1:5432,h2:5432/orders?target_session_attrs=read-write") \
        == DatabaseOwner("shop-order", "pw", "orders")
    assert DatabaseOwner.from_dsn("postgresql://shop-order@h/orders").password is None
    with pytest.raises(ProvisioningError, match="no user"):
        DatabaseOwner.from_dsn("postgresql://h/orders")


ENV = {"ORDER_DB_DSN": "postgresql://o:secret-one@h/orders", "PAYMENT_DB_DSN": "postgresql://p:secret-two@h/payments",
       "PG_ADMIN_DSN": "postgresql://postgres@h/postgres", "ORDER_RABBITMQ_URL": "amqp://o:secret-three@h/",
       "PAYMENT_RABBITMQ_URL": "amqp://p:secret-four@h/"}


def test_the_command_names_every_missing_input_and_needs_only_those_of_its_half(capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args([], {"ORDER_DB_DSN": "postgresql://o@h/orders"})
    assert exited.value.code == 2
    assert "PAYMENT_DB_DSN, PG_ADMIN_DSN, ORDER_RABBITMQ_URL, PAYMENT_RABBITMQ_URL missing" in capsys.readouterr().err
    only = parse_args(["--only", "rabbitmq"], {key: ENV[key] for key in ("ORDER_RABBITMQ_URL", "PAYMENT_RABBITMQ_URL")})
    assert only.order_db_dsn is None and only.order_rabbitmq_url == ENV["ORDER_RABBITMQ_URL"]


def test_the_definitions_file_is_written_for_its_owner_only_and_no_password_is_printed(tmp_path, capsys):
    path = tmp_path / "definitions.json"
    path.write_text("old")
    path.chmod(0o644)
    assert main(["--only", "rabbitmq", "--definitions", str(path),
                 "--operator-rabbitmq-url", "amqp://ops:secret-five@h/"], ENV) == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [user["name"] for user in json.loads(path.read_text())["users"]] == ["o", "p", "ops"]
    out = capsys.readouterr()
    assert "secret" not in out.out + out.err and "definitions written to" in out.out


def test_bad_input_is_refused_before_anything_is_changed(tmp_path, capsys):
    path = tmp_path / "definitions.json"
    shared = {**ENV, "PAYMENT_RABBITMQ_URL": "amqp://o:secret-three@h/"}
    assert main(["--definitions", str(path)], shared) == 2  # PostgreSQL would be unreachable (h): not tried
    assert not path.exists()
    assert "the broker users must differ: o, o; nothing changed" in capsys.readouterr().err
