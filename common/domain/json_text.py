"""JSON text with exact amounts: what every response, message and stored idempotent reply is written as."""
import json
from datetime import datetime
from decimal import Decimal


def to_json(value: object) -> str:
    """JSON text of `value`; `Decimal`s become exact JSON numbers (never floats), datetimes ISO 8601 strings."""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return f'"{value.isoformat()}"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(to_json(v) for v in value) + "]"
    return json.dumps(value)
