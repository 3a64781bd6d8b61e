"""A queue takes messages only from its publishers (a message's `user_id`, which RabbitMQ vouches for): anything
else is dead-lettered unread, with a reason naming both users, and the replay tool never vouches for it."""
import argparse
import logging
from datetime import UTC, datetime

import pytest

from common.broker.amqp_nodes import split_urls
from common.broker.consumer import BatchConsumer, WrongPublisher
from common.broker.dead_letter_headers import REFUSED_PUBLISHER, DeadLetterInfo, death_headers, replay_headers
from common.broker.publisher import Publisher
from common.runtime.config import ConfigurationError, broker_user, load_settings
from ops.dead_letters.__main__ import BadSelection, check_replayable
from ops.dead_letters.store import DeadLetter
from tests.unit.fakes import FakeDeadLetters, FakeMessage, Number
from tests.unit.test_publish_window import Channel

DEAD = [("ack", False)]  # a dead letter's original, acked once its copy is confirmed


def consumer(handled, publishers=("shop-payment", "shop-ops")):
    async def handle(items):
        handled.extend(items)
        return {}
    return BatchConsumer("outbox_ps", Number, handle_batch=handle, batch_size=10,
                         dead_letters_via=FakeDeadLetters(), publishers=publishers, publish_as="shop-order")


async def deliver(batches, *messages):
    for message in messages:
        await batches.on_message(message)
    await batches.process([batches.pending.get_nowait() for _ in messages])


@pytest.mark.gen_test
async def test_a_message_from_another_user_is_dead_lettered_unread_with_a_reason_naming_both(caplog):
    handled = []
    batches = consumer(handled)
    forged = FakeMessage(1, b'{"n": 1}', message_id="forged", user_id="shop-order")
    with caplog.at_level(logging.WARNING, logger="common.broker.consumer"):
        await deliver(batches, forged)
    assert handled == [] and forged.outcome == DEAD
    reason = "published by 'shop-order'; outbox_ps takes messages from 'shop-ops' or 'shop-payment' only"
    assert batches.dead_letters_via.copies == [("outbox_ps.dead", "forged", reason)]
    copy = batches.dead_letters_via.messages[0]
    assert (copy.user_id, copy.headers[REFUSED_PUBLISHER]) == ("shop-order", "shop-order")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", f"refusing message forged from outbox_ps, dead-lettered unread: {reason}")]


@pytest.mark.gen_test
async def test_a_message_without_a_user_id_is_refused_and_the_ones_from_the_publishers_are_taken():
    handled = []
    batches = consumer(handled)
    anonymous = FakeMessage(1, b'{"n": 1}', message_id="anonymous", user_id=None)
    service, operator = FakeMessage(2, b'{"n": 2}', user_id="shop-payment"), FakeMessage(3, b'{"n": 3}',
                                                                                       user_id="shop-ops")
    await deliver(batches, anonymous, service, operator)
    assert handled == [2, 3]
    assert [m.outcome for m in (anonymous, service, operator)] == [DEAD, [], [("ack", True)]]
    assert batches.dead_letters_via.copies[0][2].startswith("published without a user_id; outbox_ps takes")
    assert batches.dead_letters_via.messages[0].headers[REFUSED_PUBLISHER] == ""


@pytest.mark.gen_test
async def test_other_dead_letters_are_published_as_the_service_s_own_user_without_the_refusal_mark():
    batches = consumer([])
    spoofed = FakeMessage(1, b"not json", message_id="m", user_id="shop-payment", headers={REFUSED_PUBLISHER: "x"})
    await deliver(batches, spoofed)
    copy = batches.dead_letters_via.messages[0]
    assert (copy.user_id, copy.headers["x-shop-reason"]) == ("shop-order", "body is not valid JSON")
    assert REFUSED_PUBLISHER not in copy.headers  # a header the publisher sent itself is not taken for ours


def test_a_consumer_without_any_publisher_is_a_bug_not_a_queue_open_to_everyone():
    with pytest.raises(ValueError, match="no publisher"):
        consumer([], publishers=("", ""))


def test_wrong_publisher_is_an_invalid_message_so_it_takes_the_dead_letter_path():
    assert isinstance(WrongPublisher("x", "q", ["y"]), Exception)
    assert str(WrongPublisher(None, "q", ["y"])) == "published without a user_id; q takes messages from 'y' only"


@pytest.mark.gen_test
async def test_every_publish_carries_the_publisher_s_user_id():
    channel = Channel()
    sent = []

    async def publish(message, routing_key, timeout):
        sent.append(message.user_id)
    channel.default_exchange.publish = publish
    await Publisher(channel, timeout=1, user_id="shop-order").publish("outbox_os", b"{}", 1)
    assert sent == ["shop-order"]


def test_the_publishers_default_to_the_user_of_the_process_s_own_rabbitmq_url():
    settings = load_settings({"RABBITMQ_URL": "amqp://shop-order:pw@rabbit:5672/", "AUTH_MODE": "off",
                              "ORDER_SVC_BROKER_USER": "", "PAYMENT_SVC_BROKER_USER": "", "BROKER_OPERATOR_USER": ""})
    assert (settings.order_svc_broker_user, settings.payment_svc_broker_user, settings.broker_operator_user) == \
        ("shop-order", "shop-order", "")
    settings = load_settings({"RABBITMQ_URL": "amqp://shop-order:pw@rabbit:5672/", "AUTH_MODE": "off",
                              "PAYMENT_SVC_BROKER_USER": "shop-payment", "BROKER_OPERATOR_USER": "shop-ops"})
    assert (settings.payment_svc_broker_user, settings.broker_operator_user) == ("shop-payment", "shop-ops")
    # aiormq logs in as guest when the URL names no user; a percent-encoded name is decoded.
    assert broker_user("amqp://rabbit/") == "guest"
    assert broker_user("amqp://a%40b:p@h1/,amqp://a%40b:p@h2/") == "a@b"


def letter(message_id, headers):
    return DeadLetter(FakeMessage(1, message_id=message_id, headers=headers), DeadLetterInfo.from_headers(headers, "q"))


def test_a_dead_letter_refused_for_its_publisher_is_never_replayed_by_id():
    now = datetime.now(UTC)
    forged = letter("forged", death_headers({}, "q", "published by 'x'", now, refused_publisher="x"))
    broken = letter("broken", death_headers({}, "q", "processing failed twice", now))
    assert (forged.info.refused_publisher, broken.info.refused_publisher) == ("x", None)
    check_replayable([forged, broken], argparse.Namespace(ids=None))  # --all: replay leaves it (and says so)
    check_replayable([broken], argparse.Namespace(ids=["broken"]))
    with pytest.raises(BadSelection, match="forged was refused for its publisher"):
        check_replayable([forged], argparse.Namespace(ids=["forged"]))
    # Were it replayed and dead-lettered again for another reason, the mark would not follow it.
    assert REFUSED_PUBLISHER not in replay_headers(forged.message.headers, now)


def test_the_nodes_of_a_cluster_url_list_must_log_in_as_one_user():
    with pytest.raises(ConfigurationError, match="different users"):
        split_urls("amqp://shop-order:a@h1/,amqp://shop-payment:b@h2/")
    assert len(split_urls("amqp://u:a@h1/,amqp://u:a@h2/")) == 2
