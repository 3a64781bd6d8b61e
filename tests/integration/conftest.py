"""In-process services (the exact classes `python -m ...` runs) against real PostgreSQL and RabbitMQ,
on databases and a vhost of this test run only."""
import asyncio
import contextlib
import io
import secrets
from dataclasses import replace

import pytest

from common.broker.messages import ORDER_REQUESTS, PAYMENT_RESULTS
from common.runtime.config import load_settings
from harness.infra import INFRA
from ops.dead_letters.store import DeadLetterQueue, UnknownQueue
from order_svc.bootstrap import OrderService
from payment_svc.bootstrap import PaymentService


@contextlib.contextmanager
def own_run_env(prefix, **settings):
    """The environment of in-process services on databases and a vhost of their own (named from `prefix`), dropped
    afterwards, with `settings` added."""
    with INFRA.own_vhost(prefix) as run_id:
        try:
            yield {
                "ORDER_DB_DSN": INFRA.dsn(f"{run_id}_orders"),
                "PAYMENT_DB_DSN": INFRA.dsn(f"{run_id}_payments"),
                "RABBITMQ_URL": INFRA.amqp_url(run_id),
                "LOG_LEVEL": "WARNING",
                "AUTH_MODE": "off",
                # Admin ports the kernel picks (`service.admin_server.port`): tests run beside other stacks.
                "ORDER_SVC_ADMIN_PORT": "0",
                "PAYMENT_SVC_ADMIN_PORT": "0",
                **settings,
            }
        finally:
            INFRA.drop_database(f"{run_id}_orders")
            INFRA.drop_database(f"{run_id}_payments")


@pytest.fixture(scope="session")
def run_env():
    with own_run_env("shop_it") as env:
        yield env


@pytest.fixture
def settings(run_env):
    # Ports the kernel picks when the server binds (`service.port`): a port found free earlier may be taken by then.
    return load_settings({**run_env, "ORDER_SVC_PORT": "0", "PAYMENT_SVC_PORT": "0"})


def running(io_loop, service):
    io_loop.run_sync(service.start, timeout=30)
    return service


def stopped(io_loop, service, timeout=30):
    """Stop `service`; if that takes over `timeout` s, fail with the stack of every task (the stuck one among
    them) rather than a bare timeout."""
    async def stop():
        stopping = asyncio.ensure_future(service.stop())
        await asyncio.wait([stopping], timeout=timeout)
        if not stopping.done():
            stacks = io.StringIO()
            for task in asyncio.all_tasks():
                task.print_stack(file=stacks)
            stopping.cancel()
            pytest.fail(f"{type(service).__name__}.stop() took over {timeout} s; the tasks:\n{stacks.getvalue()}")
        stopping.result()
    io_loop.run_sync(stop, timeout=timeout + 5)


@pytest.fixture
def order_service(io_loop, settings):
    service = running(io_loop, OrderService(settings))
    yield service
    stopped(io_loop, service)


@pytest.fixture
def payment_service(io_loop, settings, request):
    """The Payments Service; parametrize it indirectly with a dict of `Settings` fields to change."""
    settings = replace(settings, **getattr(request, "param", {}))
    service = running(io_loop, PaymentService(settings))
    yield service
    stopped(io_loop, service)


@pytest.fixture
def user_id():
    """A user id no other test uses."""
    return secrets.randbelow(2**40) + 1


@pytest.fixture
def dead_letter_ids(io_loop, run_env):
    """Ids a test dead-letters: their dead letters are dropped afterwards, so other tests see their own only."""
    ids = set()
    yield ids

    async def drop():
        for queue in (ORDER_REQUESTS, PAYMENT_RESULTS):
            try:
                dlq = await DeadLetterQueue.open(run_env["RABBITMQ_URL"], queue)
            except UnknownQueue:
                continue  # not declared in this run yet: nothing to drop
            try:
                for letter in await dlq.take_all():
                    if letter.id in ids:
                        await dlq.remove(letter)
            finally:
                await dlq.close()
    io_loop.run_sync(drop, timeout=30)
