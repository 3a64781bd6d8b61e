"""Parsing of untrusted input: ids, money amounts, JSON bodies. Every failure raises `InvalidInput`
(or `BodyTooLarge`) with a message naming the field."""
import json
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn

from common.domain.errors import InvalidInput

MAX_ID = 2**63 - 1  # PostgreSQL BIGINT
MAX_AMOUNT = Decimal("1000000000.00")
MAX_DESCRIPTION = 1000
CENT = Decimal("0.01")
DEFAULT_PAGE = 100
MAX_PAGE = 1000


def parse_id(value: object, field: str) -> int:
    """A positive BIGINT from a JSON integer or a string of digits."""
    # JSON has one number type: 7.0 is the integer 7, as JSON Schema's `integer` says (a huge exponent is
    # left to be rejected below, never expanded).
    if isinstance(value, Decimal) and value.is_finite() and value.adjusted() < 19 and value == value.to_integral():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidInput(f"'{field}' must be a positive integer.")
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > 19:
            raise InvalidInput(f"'{field}' must be a positive integer.")
        value = int(value)
    if not 0 < value <= MAX_ID:
        raise InvalidInput(f"'{field}' must be a positive integer up to {MAX_ID}.")
    return value


def parse_page(cursor: str, limit: str) -> tuple[int, int]:
    """(cursor, limit) of a paginated list from the query arguments `cursor` and `limit` ("" when absent):
    the cursor is the last id of the previous page (0 for the first), the limit at most `MAX_PAGE`."""
    size = parse_id(limit, "limit") if limit else DEFAULT_PAGE
    if size > MAX_PAGE:
        raise InvalidInput(f"'limit' must be at most {MAX_PAGE}.")
    return (parse_id(cursor, "cursor") if cursor else 0), size


def parse_amount(value: object, field: str = "amount") -> Decimal:
    """A positive `Decimal` with at most 2 decimal places, from a JSON number or a numeric string."""
    if isinstance(value, bool) or not isinstance(value, (int, str, Decimal)):
        raise InvalidInput(f"'{field}' must be a number.")
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        raise InvalidInput(f"'{field}' must be a number.") from None
    if not amount.is_finite():
        raise InvalidInput(f"'{field}' must be a finite number.")
    if amount <= 0:
        raise InvalidInput(f"'{field}' must be greater than 0.")
    if amount > MAX_AMOUNT:
        raise InvalidInput(f"'{field}' must be at most {MAX_AMOUNT}.")
    if amount != amount.quantize(CENT):
        raise InvalidInput(f"'{field}' must have at most 2 decimal places.")
    return amount.quantize(CENT)


def parse_description(value: object) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput("'description' must be a string.")
    if len(value) > MAX_DESCRIPTION:
        raise InvalidInput(f"'description' must be at most {MAX_DESCRIPTION} characters.")
    if "\x00" in value:
        raise InvalidInput("'description' must not contain NUL characters.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800" decodes but cannot be stored
        raise InvalidInput("'description' must be valid Unicode text.") from None
    return value


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidInput(f"Duplicate field '{key}'.")
        obj[key] = value
    return obj


def _reject_constant(name: str) -> NoReturn:
    raise InvalidInput(f"{name} is not a valid JSON number.")


def parse_json_object(body: bytes, required: Sequence[str], optional: Sequence[str] = ()) -> dict[str, Any]:
    """Decode a request body that must be a JSON object with exactly the given fields.

    Numbers are decoded as `Decimal` (never float), so amounts stay exact."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("Request body must be UTF-8.") from None
    if not text.strip():
        raise InvalidInput("Request body must be a JSON object.")
    try:
        data = json.loads(text, parse_float=Decimal, parse_constant=_reject_constant,
                          object_pairs_hook=_reject_duplicate_keys)
    except (ValueError, RecursionError):
        raise InvalidInput("Request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidInput("Request body must be a JSON object.")
    missing = [f for f in required if f not in data]
    if missing:
        raise InvalidInput(f"Missing field '{missing[0]}'.")
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise InvalidInput(f"Unknown field '{unknown[0]}'.")
    return data
