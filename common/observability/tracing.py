"""One trace per order across the gateway, both services and both outbox hops (docs/operations.md "Tracing").

Decided once at start-up by the standard OpenTelemetry variables (`start`): with OTEL_TRACES_EXPORTER=none,
the default, OpenTelemetry is not even imported and `current` stays `Off`, whose every call does nothing:
no span, no header, the outbox rows' `traceparent` NULL. The zero-code instrumentations cost 1.6-1.9x the CPU
per order even with their exporter off (bench/otel_probe.py), so the services call these few hooks instead,
and only `common.observability.otel` (loaded when tracing is on) knows OpenTelemetry.

A trace context travels as a W3C `traceparent` string: in the HTTP request, in the outbox and inbox rows, and
with every message sent (first sends and resends alike): the AMQP `traceparent` header of a message of one
entry, a field of each entry in a message of several (`common.broker.packing`)."""
from collections.abc import Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

HEADER = "traceparent"  # the AMQP header (and W3C HTTP header) a trace context travels in

# A W3C traceparent ("00-<trace id>-<span id>-<flags>"), or None where there is no trace to continue.
Trace = str | None


class Span(Protocol):
    """What `Tracer.server` yields."""

    def set_status_code(self, code: int) -> None: ...
    def set_attribute(self, key: str, value: str | int) -> None: ...


# (message id, the trace it came with, order id or None): one consumed entry, as `Tracer.process` takes it.
Consumed = tuple[str | None, Trace, int | None]


class Tracer(Protocol):
    """The hooks the services call (`current`): `Off`, or `common.observability.otel.On` with tracing on."""
    enabled: bool

    def server(self, method: str, route: str,
               headers: MutableMapping[str, str]) -> AbstractContextManager[Span]: ...
    def traceparent(self) -> Trace: ...
    def send(self, queue: str, message_id: str, traces: Sequence[Trace]) -> AbstractContextManager[list[Trace]]: ...
    def process(self, queue: str, entries: Sequence[Consumed]) -> AbstractContextManager[list[Trace]]: ...
    def steps(self, name: str, orders: Sequence[tuple[int, Trace]]) -> AbstractContextManager[list[Trace]]: ...
    def shutdown(self) -> None: ...


class NoSpan:
    """What `Off.server` yields: the span that is not there."""

    def set_status_code(self, code: int) -> None:
        pass

    def set_attribute(self, key: str, value: str | int) -> None:
        pass


NO_SPAN = NoSpan()


class Off:
    """Tracing off (OTEL_TRACES_EXPORTER=none): every hook is a no-op; `common.observability.otel.On` has the same
    ones."""
    enabled = False

    def server(self, method: str, route: str, headers: MutableMapping[str, str]) -> AbstractContextManager[Span]:
        """A SERVER span continuing the request's `traceparent` header; its own context replaces it in
        `headers` (for the request forwarded on). Yields an object with `set_status_code(code)` and
        `set_attribute(key, value)`; a `ShopError` raised inside sets the status code it answers with."""
        return nullcontext(NO_SPAN)

    def traceparent(self) -> Trace:
        """The current span's context (to store with an outbox row), or None."""
        return None

    def send(self, queue: str, message_id: str, traces: Sequence[Trace]) -> AbstractContextManager[list[Trace]]:
        """A PRODUCER span per entry of one message (child of the entry's trace in `traces`), around its publish;
        yields their contexts, in order, for the message to carry (each None where that trace is None, and
        all None when off)."""
        return nullcontext([None] * len(traces))

    def process(self, queue: str, entries: Sequence[Consumed]) -> AbstractContextManager[list[Trace]]:
        """A CONSUMER span per (message id, trace, order id or None) of a consumer's batch (child of the trace
        the entry came with), around the batch's handling; yields their contexts, in order (all None when off).
        Spans, like the other hooks, are given only what they name: never an entry's amount."""
        return nullcontext([None] * len(entries))

    def steps(self, name: str, orders: Sequence[tuple[int, Trace]]) -> AbstractContextManager[list[Trace]]:
        """An INTERNAL span per (order id, the trace it continues); yields their contexts, in order (all None
        when off)."""
        return nullcontext([None] * len(orders))

    def shutdown(self) -> None:
        pass


current: Tracer = Off()


def trace_id_of(trace: Trace) -> str:
    """The trace id in a traceparent ("00-<trace id>-..."), for a log line; "-" without one."""
    return trace[3:35] if trace else "-"


def enabled_by(environ: Mapping[str, str]) -> bool:
    """Whether OTEL_TRACES_EXPORTER names an exporter (it is a comma-separated list; `none` alone is off)."""
    return exporters(environ) != []


def exporters(environ: Mapping[str, str]) -> list[str]:
    names = [name.strip() for name in environ.get("OTEL_TRACES_EXPORTER", "none").split(",")]
    return [name for name in names if name and name != "none"]


def start(otel_environ: Mapping[str, str], service: str) -> None:
    """Turn tracing on if OTEL_TRACES_EXPORTER says so (`otel_environ`: the OTEL_* variables, .env defaults
    under the real environment). Raises `ConfigurationError` for an exporter it does not know."""
    global current
    if enabled_by(otel_environ):
        from common.observability import otel  # only now: with tracing off, OpenTelemetry's import costs nothing either
        current = otel.On(otel_environ, service, exporters(otel_environ))


def stop() -> None:
    """Export the spans still buffered (at process exit)."""
    current.shutdown()
