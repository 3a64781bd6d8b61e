"""Several outbox rows in one message, and a message read back as its entries (docs/architecture.md, the order flow).

A body is either one entry, a JSON object (the format from before packing, which older consumers read), or a
JSON array of entries. A message of one entry carries its trace context in the `traceparent` header, as
before; in an array each entry carries its own in a `traceparent` field, since each order is its own trace.

Reading is strict per entry: a malformed entry is refused on its own (its `Entry.item` is the
`InvalidMessage` saying why) while the others of the message are processed; only a body that is not JSON at
all, or neither an object nor a non-empty array, refuses the whole message."""
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

from common.domain.errors import InvalidMessage
from common.observability.tracing import Trace

TRACE_FIELD = "traceparent"
MAX_TRACE_LENGTH = 512  # a W3C traceparent has 55 characters; later versions may add fields

# One decoder for every message: `json.loads` with an argument builds a new one per call.
_DECODER = json.JSONDecoder(parse_float=Decimal)
_SPACE = re.compile(r"[ \t\n\r]*")


class EntryType(Protocol):
    """A message type (`common.broker.messages`): the fields of its entries, and how to read one."""
    FIELDS: tuple[str, ...]

    @classmethod
    def from_entry(cls, data: Mapping[str, Any]) -> Any:
        """The item of an entry with exactly `FIELDS`; raises `InvalidMessage`."""


class Entry(NamedTuple):
    """One entry of a message as read: the item, or the `InvalidMessage` saying why there is none; the trace
    context it continues (its own, else its message's header); its JSON text as received, which a dead letter
    of it alone carries."""
    item: Any
    trace: Trace
    text: str


def pack(entries: Sequence[Mapping[str, Any]], traces: Sequence[Trace]) -> bytes:
    """The body of a message of several entries, each with the trace context it continues (if any)."""
    return json.dumps([{**entry, TRACE_FIELD: trace} if trace else entry
                       for entry, trace in zip(entries, traces)]).encode()


def unpack(body: bytes, trace: Trace, kind: EntryType) -> list[Entry]:
    """The entries of a message whose header carries `trace`: one for an object, one per element of an array.

    Raises `InvalidMessage` if the body is not JSON, or neither an object nor a non-empty array."""
    try:
        text = body.decode()
        start = _after_space(text, 0)
        if text[start:start + 1] != "[":
            return [read_entry(kind, _DECODER.decode(text), text, trace, "body")]
        elements = list(_elements(text, start))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidMessage("body is not valid JSON") from None
    if not elements:
        raise InvalidMessage("body must be an object or a non-empty array of objects")
    return [read_entry(kind, value, element_text, trace, f"entry {index}")
            for index, (value, element_text) in enumerate(elements)]


def read_entry(kind: EntryType, value: Any, text: str, trace: Trace, where: str) -> Entry:
    """`value` (the JSON of `text`) read as an entry of `kind`; `where` names it in a reason ("body", "entry 3")."""
    if isinstance(value, dict) and TRACE_FIELD in value:
        value = dict(value)
        trace = value.pop(TRACE_FIELD)
        if not isinstance(trace, str) or len(trace) > MAX_TRACE_LENGTH:
            return Entry(InvalidMessage(f"{where}: '{TRACE_FIELD}' must be a string of at most {MAX_TRACE_LENGTH} "
                                        "characters"), None, text)
    if not isinstance(value, dict) or set(value) != set(kind.FIELDS):
        return Entry(InvalidMessage(f"{where} must be an object with exactly the fields {sorted(kind.FIELDS)}"),
                     trace, text)
    try:
        return Entry(kind.from_entry(value), trace, text)
    except InvalidMessage as exc:  # a message of one entry keeps the reasons it had before packing
        return Entry(exc if where == "body" else InvalidMessage(f"{where}: {exc}"), trace, text)


def _after_space(text: str, at: int) -> int:
    """The index of the first character at or after `at` that is not JSON whitespace."""
    space = _SPACE.match(text, at)
    return space.end() if space else at  # a match of `*` is never None: this is for the type checker


def _elements(text: str, start: int) -> Iterator[tuple[Any, str]]:
    """(value, its text) of each element of the JSON array at `text[start]`; raises ValueError if it is none."""
    end = _after_space(text, start + 1)
    if text[end:end + 1] == "]":
        _at_end(text, end + 1)
        return
    while True:
        value, after = _DECODER.raw_decode(text, end)
        yield value, text[end:after]
        end = _after_space(text, after)
        if text[end:end + 1] == "]":
            _at_end(text, end + 1)
            return
        if text[end:end + 1] != ",":
            raise ValueError("expected ',' or ']'")
        end = _after_space(text, end + 1)


def _at_end(text: str, end: int) -> None:
    if _after_space(text, end) != len(text):
        raise ValueError("extra data after the array")
