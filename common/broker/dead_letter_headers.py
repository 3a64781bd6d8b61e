"""What a dead letter says about itself: the headers that record why it was rejected and where it came from.

A service that gives up on a message publishes it to `<queue>.dead` itself, with these headers:

    x-shop-reason            why it was rejected this time ("body is not valid JSON", "processing failed twice")
    x-shop-original-queue    the queue it was consumed from (where `replay` puts it back)
    x-shop-rejected-at       when, ISO 8601 in UTC
    x-shop-first-reason      the reason and time of its first death; kept across replays, so a message that
    x-shop-first-rejected-at dies again still says what happened first
    x-shop-deaths            how often it was dead-lettered in all
    x-shop-refused-publisher the `user_id` it was published with ("" for none), when that is why it was refused
                             (not a user its queue takes messages from: possibly forged; `replay` leaves it)

A message RabbitMQ dead-lettered itself (the queues keep their `x-dead-letter-*` arguments as a safety net)
has only the broker's `x-death` / `x-first-death-*` headers; `DeadLetterInfo` reads those too."""
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# A message's headers as aio-pika gives them (AMQP field values) and takes them.
Headers = Mapping[str, Any]

REASON = "x-shop-reason"
ORIGINAL_QUEUE = "x-shop-original-queue"
REJECTED_AT = "x-shop-rejected-at"
FIRST_REASON = "x-shop-first-reason"
FIRST_REJECTED_AT = "x-shop-first-rejected-at"
DEATHS = "x-shop-deaths"
REPLAYED_AT = "x-shop-replayed-at"
REFUSED_PUBLISHER = "x-shop-refused-publisher"

# What describes the current death only: dropped on replay (RabbitMQ's own are its to write).
_CURRENT_DEATH = (REASON, ORIGINAL_QUEUE, REJECTED_AT, REFUSED_PUBLISHER, "x-death", "x-first-death-queue",
                  "x-first-death-reason", "x-first-death-exchange", "x-last-death-queue", "x-last-death-reason",
                  "x-last-death-exchange")


def dead_letter_queue(name: str) -> str:
    return f"{name}.dead"


def utc_now() -> datetime:
    return datetime.now(UTC)


def death_headers(headers: Headers | None, queue: str, reason: str, now: datetime,
                  refused_publisher: str | None = None) -> dict[str, Any]:
    """The headers of a message consumed from `queue` once it is dead-lettered for `reason` at `now`;
    `refused_publisher` is the `user_id` it came with ("" for none) if that is the reason."""
    kept = {key: value for key, value in (headers or {}).items() if key != REFUSED_PUBLISHER}
    at = now.isoformat(timespec="milliseconds")
    refused = {} if refused_publisher is None else {REFUSED_PUBLISHER: refused_publisher}
    return {**kept, REASON: reason, ORIGINAL_QUEUE: queue, REJECTED_AT: at,
            FIRST_REASON: kept.get(FIRST_REASON, reason), FIRST_REJECTED_AT: kept.get(FIRST_REJECTED_AT, at),
            DEATHS: int(kept.get(DEATHS, 0)) + 1, **refused}


def replay_headers(headers: Headers | None, now: datetime) -> dict[str, Any]:
    """The headers a replayed message travels with: the application's own and its history (first death, deaths),
    without those describing the death it is replayed from."""
    info = DeadLetterInfo.from_headers(headers, "")  # its queue is not among what is kept
    kept = {key: value for key, value in (headers or {}).items() if key not in _CURRENT_DEATH}
    return {**kept, FIRST_REASON: info.first_reason, FIRST_REJECTED_AT: info.first_rejected_at.isoformat()
            if info.first_rejected_at else "", DEATHS: info.deaths, REPLAYED_AT: now.isoformat(timespec="milliseconds")}


@dataclass(frozen=True)
class DeadLetterInfo:
    reason: str
    original_queue: str
    rejected_at: datetime | None
    first_reason: str
    first_rejected_at: datetime | None
    deaths: int
    refused_publisher: str | None = None  # the user_id it came with, if it was refused for it

    @classmethod
    def from_headers(cls, given: Headers | None, default_queue: str) -> "DeadLetterInfo":
        """Read ours, else RabbitMQ's `x-death` (most recent death first), else say "unknown"."""
        headers = given or {}
        if REASON in headers:
            refused = headers.get(REFUSED_PUBLISHER)
            return cls(str(headers[REASON]), str(headers.get(ORIGINAL_QUEUE, default_queue)),
                       _parse_time(headers.get(REJECTED_AT)), str(headers.get(FIRST_REASON, headers[REASON])),
                       _parse_time(headers.get(FIRST_REJECTED_AT, headers.get(REJECTED_AT))),
                       int(headers.get(DEATHS, 1)), None if refused is None else _text(refused))
        deaths = headers.get("x-death") or []
        if deaths:
            last, first = deaths[0], deaths[-1]
            return cls(f"rejected by RabbitMQ ({last.get('reason')})", str(last.get("queue", default_queue)),
                       _parse_time(last.get("time")),
                       str(headers.get(FIRST_REASON, f"rejected by RabbitMQ ({first.get('reason')})")),
                       _parse_time(headers.get(FIRST_REJECTED_AT, first.get("time"))),
                       int(headers.get(DEATHS, 0)) + sum(int(d.get("count", 1)) for d in deaths))
        return cls("unknown", default_queue, None, str(headers.get(FIRST_REASON, "unknown")),
                   _parse_time(headers.get(FIRST_REJECTED_AT)), int(headers.get(DEATHS, 0)))


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _parse_time(value: object) -> datetime | None:
    """An ISO 8601 string (ours) or a datetime (an AMQP timestamp, RabbitMQ's) as an aware datetime, else None."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str) and value:
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
