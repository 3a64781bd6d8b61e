from datetime import UTC, datetime, timedelta

from common.broker.dead_letter_headers import DeadLetterInfo, death_headers, replay_headers

FIRST = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)
LATER = FIRST + timedelta(hours=1)


def test_first_death_records_reason_origin_and_time_and_keeps_application_headers():
    headers = death_headers({"traceparent": "00-abc-def-01"}, "outbox_os", "body is not valid JSON", FIRST)
    assert headers == {"traceparent": "00-abc-def-01", "x-shop-reason": "body is not valid JSON",
                       "x-shop-original-queue": "outbox_os", "x-shop-rejected-at": "2026-12-01T20:00:00.000+00:00",
                       "x-shop-first-reason": "body is not valid JSON",
                       "x-shop-first-rejected-at": "2026-12-01T20:00:00.000+00:00", "x-shop-deaths": 1}


def test_a_replayed_message_that_dies_again_keeps_its_first_death():
    first = death_headers({"traceparent": "t"}, "outbox_os", "processing failed twice", FIRST)
    replayed = replay_headers(first, LATER)
    assert "x-shop-reason" not in replayed and "x-shop-original-queue" not in replayed
    assert (replayed["traceparent"], replayed["x-shop-deaths"]) == ("t", 1)
    again = DeadLetterInfo.from_headers(death_headers(replayed, "outbox_os", "body is not valid JSON", LATER), None)
    assert again == DeadLetterInfo("body is not valid JSON", "outbox_os", LATER, "processing failed twice", FIRST, 2)


def test_a_message_rabbitmq_dead_lettered_itself_is_read_from_x_death():
    headers = {"x-death": [{"queue": "outbox_ps", "reason": "delivery_limit", "count": 1, "time": LATER},
                           {"queue": "outbox_ps", "reason": "rejected", "count": 2, "time": FIRST}],
               "x-first-death-queue": "outbox_ps", "x-first-death-reason": "rejected"}
    assert DeadLetterInfo.from_headers(headers, "outbox_ps") == DeadLetterInfo(
        "rejected by RabbitMQ (delivery_limit)", "outbox_ps", LATER, "rejected by RabbitMQ (rejected)", FIRST, 3)
    replayed = replay_headers(headers, LATER)
    assert not any(key.startswith(("x-death", "x-first-death")) for key in replayed)
    assert replayed["x-shop-first-reason"] == "rejected by RabbitMQ (rejected)" and replayed["x-shop-deaths"] == 3


def test_a_message_without_death_headers_is_unknown_not_an_error():
    assert DeadLetterInfo.from_headers(None, "outbox_os") == \
        DeadLetterInfo("unknown", "outbox_os", None, "unknown", None, 0)
