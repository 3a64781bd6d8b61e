"""Exact error messages and boundaries of input parsing, message decoding and idempotency keys: the mutants that
the looser tests (a word of the message, values far from a bound) let survive (docs/testing.md, "Mutation testing")."""
from decimal import Decimal
from types import SimpleNamespace

import pytest

from common.broker.messages import PaymentRequest, PaymentResult
from common.db.idempotency import MAX_KEY_LENGTH, from_request, run_once
from common.domain.errors import InvalidInput, InvalidMessage
from common.domain.validation import (
    DEFAULT_PAGE,
    MAX_AMOUNT,
    MAX_DESCRIPTION,
    MAX_ID,
    MAX_PAGE,
    parse_amount,
    parse_description,
    parse_id,
    parse_json_object,
    parse_page,
)
from tests.unit.test_packing import read_one


def message_of(call, *args, error=InvalidInput):
    with pytest.raises(error) as raised:
        call(*args)
    return getattr(raised.value, "message", str(raised.value))


@pytest.mark.parametrize("body, message", [
    (b"{", "body is not valid JSON"),
    (b'{"order_id": 1}', "body must be an object with exactly the fields ['amount', 'order_id', 'user_id']"),
    (b'{"order_id": 0, "user_id": 1, "amount": "1"}',
     "'order_id' must be a positive integer up to 9223372036854775807."),
    (b'{"order_id": 1, "user_id": "x", "amount": "1"}', "'user_id' must be a positive integer."),
    (b'{"order_id": 1, "user_id": 1, "amount": "0"}', "'amount' must be greater than 0."),
])
def test_a_malformed_payment_request_says_exactly_what_is_wrong(body, message):
    assert message_of(read_one, PaymentRequest, body, error=InvalidMessage) == message


@pytest.mark.parametrize("body, message", [
    (b'{"order_id": 1, "status": "NEW"}', "'status' must be one of ('FINISHED', 'CANCELLED')"),
    (b'{"order_id": "x", "status": "FINISHED"}', "'order_id' must be a positive integer."),
])
def test_a_malformed_payment_result_says_exactly_what_is_wrong(body, message):
    assert message_of(read_one, PaymentResult, body, error=InvalidMessage) == message


def test_a_payment_request_with_a_json_number_amount_decodes_it_exactly():
    # As a float, 0.1 would be 0.1000000000000000055...: more than two decimals, rejected.
    assert read_one(PaymentRequest, b'{"order_id": 1, "user_id": 2, "amount": 0.1}').amount == Decimal("0.10")


def test_an_id_of_twenty_digits_as_a_json_number_is_not_expanded_but_rejected_as_not_an_integer():
    assert message_of(parse_id, Decimal("1E+19"), "user_id") == "'user_id' must be a positive integer."
    assert parse_id(Decimal("9.2E+18"), "user_id") == 9200000000000000000


def test_an_id_of_nineteen_digits_in_a_string_is_accepted_and_one_of_twenty_is_not_an_integer():
    assert parse_id(str(MAX_ID), "user_id") == MAX_ID
    assert message_of(parse_id, "1" * 20, "user_id") == "'user_id' must be a positive integer."


def test_an_amount_of_exactly_the_maximum_is_accepted():
    assert parse_amount(str(MAX_AMOUNT)) == MAX_AMOUNT


def test_a_description_of_exactly_the_maximum_length_is_accepted():
    assert parse_description("x" * MAX_DESCRIPTION) == "x" * MAX_DESCRIPTION


@pytest.mark.parametrize("value, message", [
    (5, "'description' must be a string."), ("a\x00", "'description' must not contain NUL characters."),
    ("\ud800", "'description' must be valid Unicode text."),
])
def test_description_messages_are_exact(value, message):
    assert message_of(parse_description, value) == message


@pytest.mark.parametrize("body, message", [(b"\xff", "Request body must be UTF-8."),
                                           (b"{", "Request body is not valid JSON."),
                                           (b"[]", "Request body must be a JSON object."),
                                           (b" ", "Request body must be a JSON object.")])
def test_json_body_messages_are_exact(body, message):
    assert message_of(parse_json_object, body, ("a",)) == message


def fake_request(key):
    return SimpleNamespace(headers={"Idempotency-Key": key}, method="PUT", path="/payments/1", body=b"{}")


def test_an_idempotency_key_of_exactly_the_maximum_length_is_accepted():
    assert from_request(fake_request("k" * MAX_KEY_LENGTH), "user-1").key == "k" * MAX_KEY_LENGTH
    with pytest.raises(InvalidInput):
        from_request(fake_request("k" * (MAX_KEY_LENGTH + 1)), "user-1")


def test_an_idempotency_key_of_one_character_is_accepted_and_an_empty_one_is_named_in_the_error():
    assert from_request(fake_request("k"), "user-1").scoped_key == ("user-1", "k")
    assert message_of(from_request, fake_request(""), "user-1") == \
        f"'Idempotency-Key' must be 1 to {MAX_KEY_LENGTH} printable ASCII characters."


@pytest.mark.gen_test
async def test_run_once_without_a_key_passes_the_work_its_arguments():
    async def work(cur, *args):
        return (cur, args)
    outcome = await run_once("cursor", None, work, 1, 2)
    assert (outcome.result, outcome.replayed) == (("cursor", (1, 2)), False)


def test_messages_are_encoded_with_the_field_names_the_other_service_decodes():
    assert PaymentResult(7, "FINISHED").encode() == b'{"order_id": 7, "status": "FINISHED"}'
    assert PaymentRequest(7, 3, Decimal("2.50")).encode() == b'{"order_id": 7, "user_id": 3, "amount": "2.50"}'


@pytest.mark.parametrize("cursor, limit, page", [("", "", (0, DEFAULT_PAGE)), ("7", "3", (7, 3)),
                                                 ("", str(MAX_PAGE), (0, MAX_PAGE))])
def test_a_page_is_the_cursor_and_limit_given_with_defaults_for_the_missing(cursor, limit, page):
    assert parse_page(cursor, limit) == page


@pytest.mark.parametrize("cursor, limit, message", [
    ("", str(MAX_PAGE + 1), f"'limit' must be at most {MAX_PAGE}."),
    ("", "0", f"'limit' must be a positive integer up to {MAX_ID}."),
    ("x", "", "'cursor' must be a positive integer."),
])
def test_a_bad_page_says_which_argument_is_wrong(cursor, limit, message):
    assert message_of(parse_page, cursor, limit) == message
