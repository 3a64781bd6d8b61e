"""Dead letters keep their reason and origin, and `python -m ops.dead_letters` replays or drops them.

The Payments Service runs in-process on this run's vhost; the command runs as the operator runs it, in a
process of its own, with `RABBITMQ_URL` pointing at that vhost."""
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal

import aio_pika
import pytest
from prometheus_client import REGISTRY

from common.broker.connection import declare_queue
from common.broker.dead_letter_headers import dead_letter_queue
from common.broker.messages import ORDER_REQUESTS, PaymentRequest
from ops.dead_letters.store import DeadLetterQueue
from payment_svc import repo, service
from tests.conftest import eventually
from tests.integration.test_payment_service import balance, inbox_row


async def dead_letters_cli(run_env, *args, stdin=b"", rabbitmq_url=None):
    """Run the command in its own process; returns (exit status, stdout, stderr)."""
    env = {**os.environ, "RABBITMQ_URL": rabbitmq_url or run_env["RABBITMQ_URL"]}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.dead_letters", *args, env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    return process.returncode, out.decode(), err.decode()


async def dead_letters_of(run_env, message_id, queue=ORDER_REQUESTS):
    """The dead letters of `queue` with `message_id` (looked at, then handed back)."""
    dlq = await DeadLetterQueue.open(run_env["RABBITMQ_URL"], queue)
    try:
        return [letter for letter in await dlq.take_all() if letter.id == message_id]
    finally:
        await dlq.close()


async def dead_lettered(run_env, message_id, deaths=1):
    """Wait until `message_id` is in the dead-letter queue `deaths` times dead; returns its letter."""
    found = []

    async def there():
        found[:] = await dead_letters_of(run_env, message_id)
        assert [letter.info.deaths for letter in found] == [deaths]
    await eventually(there, timeout=20)
    return found[0]


async def account_with(service_, user_id, amount):
    await service.create_account(service_.db, repo.PostgresPayments(), user_id)
    await service.top_up(service_.db, repo.PostgresPayments(), user_id, Decimal(amount))


def consumed(queue=ORDER_REQUESTS):
    return REGISTRY.get_sample_value("shop_messages_consumed_total", {"queue": queue}) or 0


def simulate_bug(monkeypatch):
    """Processing of every payment request crashes (a bug, not an outage): retried once, then dead-lettered.
    Returns the order ids of each attempt, a list per batch."""
    attempts = []

    async def crash(_repo, _cur, requests, *_):
        attempts.append([request.order_id for request in requests])
        raise RuntimeError("simulated bug")
    # The consumer stores its batch with `settle` (fast path) or `store_requests` (FAST_PATH=0).
    monkeypatch.setattr(repo.PostgresPayments, "settle", crash)
    monkeypatch.setattr(repo.PostgresPayments, "store_requests", crash)
    return attempts


@pytest.mark.gen_test(timeout=90)
async def test_request_whose_processing_crashed_twice_is_replayed_after_the_fix_and_debited_once(
        payment_service, run_env, user_id, monkeypatch, dead_letter_ids):
    await account_with(payment_service, user_id, 10)
    order_id = user_id
    dead_letter_ids.add(str(order_id))
    attempts = simulate_bug(monkeypatch)
    before = datetime.now(UTC)
    message = PaymentRequest(order_id, user_id, Decimal(3)).encode()
    await payment_service.broker.publisher.publish(ORDER_REQUESTS, message, order_id)
    letter = await dead_lettered(run_env, str(order_id))
    assert attempts == [[order_id], [order_id]]
    headers = letter.message.headers
    assert (headers["x-shop-reason"], headers["x-shop-original-queue"], headers["x-shop-deaths"]) == \
        ("processing failed twice", ORDER_REQUESTS, 1)
    assert headers["x-shop-first-reason"] == "processing failed twice"
    assert before <= letter.info.rejected_at <= datetime.now(UTC)
    assert letter.message.body == PaymentRequest(order_id, user_id, Decimal(3)).encode()
    assert await inbox_row(payment_service, order_id) is None

    monkeypatch.undo()  # the fix
    code, out, err = await dead_letters_cli(run_env, "replay", ORDER_REQUESTS, "--id", str(order_id))
    assert (code, out, err) == (0, f"replayed {order_id} to {ORDER_REQUESTS}\n", "")

    async def debited():
        assert await inbox_row(payment_service, order_id) == ("FINISHED", True)
        assert await balance(payment_service, user_id) == Decimal(7)
    await eventually(debited)
    assert await dead_letters_of(run_env, str(order_id)) == []


@pytest.mark.gen_test(timeout=90)
async def test_replayed_duplicate_request_debits_nothing(payment_service, run_env, user_id, monkeypatch,
                                                   dead_letter_ids):
    await account_with(payment_service, user_id, 10)
    order_id = user_id
    dead_letter_ids.add(str(order_id))
    request = PaymentRequest(order_id, user_id, Decimal(4)).encode()
    await payment_service.broker.publisher.publish(ORDER_REQUESTS, request, order_id)

    async def debited():
        assert await inbox_row(payment_service, order_id) == ("FINISHED", True)
    await eventually(debited)
    simulate_bug(monkeypatch)
    await payment_service.broker.publisher.publish(ORDER_REQUESTS, request, order_id)  # the Order Service's resend
    await dead_lettered(run_env, str(order_id))
    monkeypatch.undo()

    seen = consumed()
    code, out, _ = await dead_letters_cli(run_env, "replay", ORDER_REQUESTS, "--all")
    assert code == 0 and f"replayed {order_id} to {ORDER_REQUESTS}" in out

    async def duplicate_taken():
        assert consumed() > seen
        assert await inbox_row(payment_service, order_id) == ("FINISHED", True)
    await eventually(duplicate_taken)
    assert await balance(payment_service, user_id) == Decimal(6)


@pytest.mark.gen_test(timeout=90)
async def test_replayed_malformed_message_returns_to_the_dead_letter_queue_with_its_reason(
        payment_service, run_env, user_id, dead_letter_ids):
    message_id = f"malformed-{user_id}"
    dead_letter_ids.add(message_id)
    await payment_service.broker.publisher.publish(ORDER_REQUESTS, b"{not json", message_id)
    first = await dead_lettered(run_env, message_id)
    assert first.info.reason == "body is not valid JSON"

    code, _, _ = await dead_letters_cli(run_env, "replay", ORDER_REQUESTS, "--id", message_id)
    assert code == 0
    again = await dead_lettered(run_env, message_id, deaths=2)
    assert (again.info.reason, again.info.original_queue) == ("body is not valid JSON", ORDER_REQUESTS)
    assert again.info.first_rejected_at == first.info.rejected_at < again.info.rejected_at
    assert "x-shop-replayed-at" in again.message.headers
    assert again.message.body == b"{not json"

    code, out, _ = await dead_letters_cli(run_env, "list", ORDER_REQUESTS, "--id", message_id)
    assert code == 0
    assert f"{message_id}" in out and "body is not valid JSON (first: body is not valid JSON" in out
    code, out, _ = await dead_letters_cli(run_env, "show", ORDER_REQUESTS, "--id", message_id)
    shown = json.loads(out)
    assert (shown["body"], shown["headers"]["x-shop-deaths"]) == ("{not json", 2)


@pytest.mark.gen_test(timeout=120)
async def test_command_refuses_bad_input_and_changes_nothing(payment_service, run_env, user_id, dead_letter_ids):
    message_id = f"kept-{user_id}"
    dead_letter_ids.add(message_id)
    await payment_service.broker.publisher.publish(ORDER_REQUESTS, b"[]", message_id)
    await dead_lettered(run_env, message_id)

    async def refused(*args, code=2, says, stdin=b""):
        result = await dead_letters_cli(run_env, *args, stdin=stdin)
        assert result[0] == code and says in result[2], result
        assert len(await dead_letters_of(run_env, message_id)) == 1

    await refused("list", "no_such_queue", says="no queue 'no_such_queue'")
    await refused("replay", ORDER_REQUESTS, "--id", "no-such-id", says="no dead letter with id no-such-id")
    await refused("purge", ORDER_REQUESTS, "--id", message_id, "--id", "no-such-id", "--yes",
                  says="no dead letter with id no-such-id")
    await refused("replay", ORDER_REQUESTS, says="replay needs --id ID or --all")
    await refused("purge", ORDER_REQUESTS, "--all", "--id", message_id, says="not both")
    await refused("purge", ORDER_REQUESTS, "--id", message_id, stdin=b"n\n", code=1, says="")
    await refused("purge", ORDER_REQUESTS, "--id", message_id, "--dry-run", code=0, says="")

    code, out, _ = await dead_letters_cli(run_env, "purge", ORDER_REQUESTS, "--id", message_id, stdin=b"y\n")
    assert code == 0 and "dropped 1 dead letter(s)" in out
    assert await dead_letters_of(run_env, message_id) == []


@pytest.mark.gen_test(timeout=60)
async def test_command_takes_the_first_reachable_node_of_a_cluster_url_list(payment_service, run_env):
    down = "amqp://guest:guest@127.0.0.1:1/x"  # nothing listens on port 1: refused at once
    code, out, _ = await dead_letters_cli(run_env, "list", ORDER_REQUESTS,
                                          rabbitmq_url=f"{down},{run_env['RABBITMQ_URL']}")
    assert code == 0 and "dead letter(s) in outbox_os.dead" in out
    code, _, err = await dead_letters_cli(run_env, "list", ORDER_REQUESTS, rabbitmq_url=down)
    assert code == 1 and "RabbitMQ unreachable: 127.0.0.1:1/x" in err


@pytest.mark.gen_test(timeout=60)
async def test_message_whose_dead_letter_copy_is_not_stored_is_requeued_not_lost(
        payment_service, run_env, user_id, dead_letter_ids):
    message_id = f"unstored-{user_id}"
    dead_letter_ids.add(message_id)
    connection = await aio_pika.connect(run_env["RABBITMQ_URL"])
    try:
        channel = await connection.channel()
        await channel.queue_delete(dead_letter_queue(ORDER_REQUESTS))  # the copy is now unroutable: returned
        failed = REGISTRY.get_sample_value("shop_messages_dead_lettered_total", {"queue": ORDER_REQUESTS}) or 0
        await payment_service.broker.publisher.publish(ORDER_REQUESTS, b"{not json", message_id)
        await asyncio.sleep(2)  # a rejection or two while the dead-letter queue is missing
        assert (REGISTRY.get_sample_value("shop_messages_dead_lettered_total", {"queue": ORDER_REQUESTS}) or 0) \
            == failed
    finally:
        await declare_queue(channel, ORDER_REQUESTS)
        await connection.close()
    letter = await dead_lettered(run_env, message_id)
    assert letter.info.reason == "body is not valid JSON"


@pytest.mark.gen_test(timeout=60)
async def test_a_message_rabbitmq_dead_lettered_itself_is_listed_and_replayed_without_its_x_death(
        run_env, user_id, dead_letter_ids):
    message_id = f"broker-rejected-{user_id}"
    dead_letter_ids.add(message_id)
    connection = await aio_pika.connect(run_env["RABBITMQ_URL"])
    try:
        channel = await connection.channel()
        queue = await declare_queue(channel, ORDER_REQUESTS)  # no consumer in this test: the message stays
        await channel.default_exchange.publish(aio_pika.Message(b"{}", message_id=message_id, headers={"a": "b"}),
                                               routing_key=ORDER_REQUESTS)
        taken = await queue.get(timeout=5)
        await taken.reject(requeue=False)  # RabbitMQ routes it to outbox_os.dead, adding x-death
        letter = await dead_lettered(run_env, message_id)
        assert letter.message.headers["x-death"][0]["reason"] == "rejected"
        assert (letter.info.reason, letter.info.original_queue) == ("rejected by RabbitMQ (rejected)", ORDER_REQUESTS)
        assert letter.info.rejected_at is not None

        code, out, _ = await dead_letters_cli(run_env, "replay", ORDER_REQUESTS, "--id", message_id)
        assert code == 0, out
        replayed = await queue.get(timeout=5)
        await replayed.ack()
        assert (replayed.message_id, replayed.body) == (message_id, b"{}")
        assert not any(key.startswith(("x-death", "x-first-death")) for key in replayed.headers)
        assert (replayed.headers["a"], replayed.headers["x-shop-first-reason"], replayed.headers["x-shop-deaths"]) \
            == ("b", "rejected by RabbitMQ (rejected)", 1)
    finally:
        await connection.close()
