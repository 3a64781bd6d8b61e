from decimal import Decimal

import pytest

from common.domain.errors import InvalidInput
from common.domain.validation import parse_amount, parse_description, parse_id, parse_json_object


@pytest.mark.parametrize("value, expected", [(1000, Decimal("1000.00")), ("12.5", Decimal("12.50")),
                                             (Decimal("0.01"), Decimal("0.01")), (" 7 ", Decimal("7.00"))])
def test_amount_accepts_numbers_and_numeric_strings(value, expected):
    assert parse_amount(value) == expected


@pytest.mark.parametrize("value, words", [
    (0, "greater than 0"), (-5, "greater than 0"), ("NaN", "finite"), ("Infinity", "finite"),
    (Decimal("1E+400"), "at most"), (2**70, "at most"), (Decimal("1.001"), "2 decimal places"),
    ("abc", "must be a number"), (True, "must be a number"), (None, "must be a number"), ([1], "must be a number"),
    (1.5, "must be a number"),
])
def test_amount_rejects_with_a_message_naming_the_problem(value, words):
    with pytest.raises(InvalidInput, match=words):
        parse_amount(value)


@pytest.mark.parametrize("value", ["1; DROP", True, Decimal("1.5"), -1, 0, 2**70, "", "١", "abc", None,
                                   "99999999999999999999"])
def test_id_rejects_everything_but_positive_bigints(value):
    with pytest.raises(InvalidInput, match="'user_id' must be a positive integer"):
        parse_id(value, "user_id")


def test_id_accepts_int_and_digit_string():
    assert parse_id(7, "x") == 7 and parse_id("42", "x") == 42 and parse_id(2**63 - 1, "x") == 2**63 - 1


@pytest.mark.parametrize("value, expected", [(Decimal("7.0"), 7), (Decimal("1E+2"), 100), (Decimal("95376.00"), 95376)])
def test_parse_id_accepts_a_json_number_with_no_fraction_as_json_schema_does(value, expected):
    assert parse_id(value, "user_id") == expected


@pytest.mark.parametrize("value", [Decimal("0.0"), Decimal("-3.0"), Decimal("1E+19"), Decimal("1E+999999999"),
                                   Decimal("NaN"), Decimal("Infinity")])
def test_parse_id_rejects_integral_numbers_out_of_range_or_not_finite(value):
    with pytest.raises(InvalidInput):
        parse_id(value, "user_id")


def test_description_is_optional_bounded_and_without_nul():
    assert parse_description(None) == ""
    assert parse_description("ok") == "ok"
    for bad, words in (("x" * 1001, "at most 1000"), ("a\x00b", "NUL"), (5, "string"), ("\ud800", "valid Unicode")):
        with pytest.raises(InvalidInput, match=words):
            parse_description(bad)


@pytest.mark.parametrize("body, words", [
    (b"", "JSON object"), (b"{", "not valid JSON"), (b"[1]", "JSON object"), (b'"s"', "JSON object"),
    (b'{"user_id": 1}', "Missing field 'amount'"), (b'{"user_id": 1, "amount": 1, "x": 2}', "Unknown field 'x'"),
    (b'{"user_id": 1, "user_id": 2, "amount": 1}', "Duplicate field 'user_id'"), (b"\xff\xfe", "UTF-8"),
    (b'{"user_id": 1, "amount": NaN}', "not a valid JSON number"), (b"[" * 100000, "not valid JSON"),
])
def test_json_body_rejections_name_the_problem(body, words):
    with pytest.raises(InvalidInput, match=words):
        parse_json_object(body, required=("user_id", "amount"))


def test_json_numbers_decode_exactly_never_as_float():
    data = parse_json_object(b'{"user_id": 1, "amount": 0.1}', required=("user_id", "amount"))
    assert data["amount"] == Decimal("0.1")
