"""QUEUE_TYPE: the queues are declared with the configured type, and a service finding a queue of the other
type says so and exits instead of crash-looping."""
import asyncio
import os
import subprocess
import sys

import aio_pika
import pytest

from common.broker.messages import ORDER_REQUESTS
from common.broker.queues import declare_queue
from common.runtime.config import ConfigurationError, load_settings
from harness.infra import INFRA
from harness.stack import ROOT, free_port


def test_an_unknown_queue_type_is_named():
    with pytest.raises(ConfigurationError, match="QUEUE_TYPE must be one of classic, quorum, not 'mirrored'"):
        load_settings({"QUEUE_TYPE": "mirrored"})


@pytest.fixture
def vhost():
    """A vhost of this test only: the queues it declares must not meet the other tests' services."""
    with INFRA.own_vhost("shop_qt") as name:
        yield name


async def declare(url, queue_type):
    connection = await aio_pika.connect(url)
    async with connection:
        await declare_queue(await connection.channel(), ORDER_REQUESTS, queue_type)


def queue_types(vhost):
    listed = INFRA.rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "type")
    return dict(line.split() for line in listed.splitlines() if line.strip())


@pytest.mark.parametrize("existing, configured", [("classic", "quorum"), ("quorum", "classic")])
def test_a_service_finding_a_queue_of_the_other_type_names_it_and_exits(vhost, existing, configured):
    url = INFRA.amqp_url(vhost)
    asyncio.run(declare(url, existing))
    database = f"{vhost}_orders"
    env = {"RABBITMQ_URL": url, "QUEUE_TYPE": configured, "ORDER_DB_DSN": INFRA.dsn(database),
           "ORDER_SVC_PORT": str(free_port()), "LOG_LEVEL": "INFO"}
    try:
        done = subprocess.run([sys.executable, "-m", "order_svc"], cwd=ROOT, env={**os.environ, **env},
                              capture_output=True, text=True, timeout=60)
    finally:
        INFRA.drop_database(database)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert f"queue {ORDER_REQUESTS} already exists" in output and f"QUEUE_TYPE={configured}" in output, output
    assert "To migrate: stop every instance" in output, output
    assert "Traceback" not in output, output
    # Nothing was changed on the broker: the queue keeps its type.
    assert queue_types(vhost)[ORDER_REQUESTS] == existing


@pytest.mark.gen_test(timeout=30)
async def test_quorum_queues_get_a_delivery_limit_and_at_least_once_dead_lettering(order_service):
    # The session's services run with the default QUEUE_TYPE (.env: quorum).
    listed = INFRA.rabbitmqctl("list_queues", "-p", order_service.settings.rabbitmq_url.rsplit("/", 1)[1],
                               "--no-table-headers", "name", "type", "arguments")
    rows = {line.split()[0]: line for line in listed.splitlines() if line.strip()}
    assert "quorum" in rows[ORDER_REQUESTS] and "quorum" in rows[f"{ORDER_REQUESTS}.dead"]
    for argument in ("x-delivery-limit", "x-dead-letter-strategy", "at-least-once", "reject-publish"):
        assert argument in rows[ORDER_REQUESTS], rows[ORDER_REQUESTS]
