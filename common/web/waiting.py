"""How long a request asks to be held for an order's outcome (blocking reads).

    GET /orders/{order_id}?wait=N   whole seconds, 1 to `MAX_WAIT`: anything else is a 400 (`parse_wait`)
    POST /orders, Prefer: wait=N    RFC 7240: a hint, never an error (§2); above `MAX_WAIT` it is taken as
                                    `MAX_WAIT`, unreadable or 0 as no preference (`preferred_wait`)

The Order Service holds such a request; the gateway gives it a longer upstream timeout and connections of its
own (`requested_wait`), and names nothing else about it."""
from urllib.parse import parse_qsl, urlencode

from common.domain.errors import InvalidInput

MAX_WAIT = 30
WAIT_PARAMETER = "wait"
PREFER, PREFERENCE_APPLIED = "Prefer", "Preference-Applied"


def parse_wait(values: list[str]) -> int | None:
    """The seconds of a `wait` query (`values`: each `wait` argument given), or None without one. Raises
    `InvalidInput` unless there is exactly one, whole seconds from 1 to `MAX_WAIT`."""
    if not values:
        return None
    value = values[-1]
    if len(values) > 1 or not (value.isascii() and value.isdigit() and len(value) <= 3) \
            or not 1 <= int(value) <= MAX_WAIT:
        raise InvalidInput(f"'wait' must be whole seconds from 1 to {MAX_WAIT}.")
    return int(value)


def preferred_wait(prefer: str | None) -> int | None:
    """The `wait` preference of a `Prefer` header's value (several headers: their values joined by commas), at
    most `MAX_WAIT`; None when it names none that can be honoured. A preference given twice counts the first
    time (RFC 7240 §2); `wait="5"` is read like `wait=5`."""
    for preference in (prefer or "").split(","):
        name, _, value = preference.split(";", 1)[0].partition("=")
        if name.strip().lower() != WAIT_PARAMETER:
            continue
        value = value.strip().strip('"')
        if not (value.isascii() and value.isdigit()) or int(value) == 0:
            return None
        return min(int(value), MAX_WAIT)
    return None


def requested_wait(method: str, uri: str, prefer: str | None) -> int | None:
    """Seconds a backend may hold this request before answering (the gateway's view): a GET's or HEAD's valid
    `wait` query, a POST's `Prefer: wait`. An invalid `wait` query counts as none: the backend refuses it at once."""
    if method in ("GET", "HEAD"):
        _, _, query = uri.partition("?")
        if WAIT_PARAMETER not in query:
            return None
        try:
            return parse_wait([v for k, v in parse_qsl(query, keep_blank_values=True) if k == WAIT_PARAMETER])
        except InvalidInput:
            return None
    return preferred_wait(prefer) if method == "POST" and prefer else None


def without_wait(uri: str) -> str:
    """`uri` without its `wait` query arguments: the request answered at once."""
    path, _, query = uri.partition("?")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != WAIT_PARAMETER]
    return f"{path}?{urlencode(kept)}" if kept else path
