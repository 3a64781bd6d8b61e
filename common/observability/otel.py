"""Tracing on: `On`, the OpenTelemetry SDK behind `common.observability.tracing`'s hooks. Imported only when
OTEL_TRACES_EXPORTER names an exporter (`common.observability.tracing.start`).

Every standard variable the SDK reads applies (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER,
OTEL_BSP_*, OTEL_EXPORTER_OTLP_*). Spans are started with an explicit parent and never made "current": the
relays and consumers handle many orders, each of its own trace, in one task."""
import os
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from common.domain.errors import ShopError
from common.observability.tracing import HEADER, Consumed, Trace
from common.runtime.config import ConfigurationError
from common.runtime.logs import trace_id

PROPAGATOR = TraceContextTextMapPropagator()


def console_exporter() -> SpanExporter:
    # One compact JSON object per span and line, beside the log lines on stdout: easy to grep and to ship.
    return ConsoleSpanExporter(formatter=one_line)


def one_line(span: ReadableSpan) -> str:
    line: str = span.to_json(indent=None)
    return line + "\n"


def otlp_exporter() -> SpanExporter:
    # Imported here: it pulls in requests and protobuf, which a console-only run does without.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


EXPORTERS: dict[str, Callable[[], SpanExporter]] = {"console": console_exporter, "otlp": otlp_exporter}


def parent(trace_header: Trace) -> Context | None:
    """The context of a traceparent string (an invalid or missing one gives the empty context: a new trace)."""
    return PROPAGATOR.extract({HEADER: trace_header}) if trace_header else None


def context_of(span: Span) -> Trace:
    """The W3C traceparent of `span`."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return carrier.get(HEADER)


class ServerSpan:
    def __init__(self, span: Span) -> None:
        self.span = span

    def set_status_code(self, code: int) -> None:
        self.span.set_attribute("http.response.status_code", code)
        if code >= 500:  # a 4xx is the client's error, not the server's (semantic conventions)
            self.span.set_status(Status(StatusCode.ERROR))

    def set_attribute(self, key: str, value: str | int) -> None:
        self.span.set_attribute(key, value)


class On:
    """`common.observability.tracing.Off`'s hooks, making spans (see there for what each does)."""
    enabled = True

    def __init__(self, otel_environ: Mapping[str, str], service: str, exporter_names: Sequence[str]) -> None:
        unknown = [name for name in exporter_names if name not in EXPORTERS]
        if unknown:
            raise ConfigurationError(f"OTEL_TRACES_EXPORTER: unknown exporter {', '.join(unknown)} "
                                     f"(known: none, {', '.join(EXPORTERS)})")
        for key, value in otel_environ.items():
            os.environ.setdefault(key, value)  # .env's OTEL_* defaults, for the SDK, which reads os.environ
        named = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
        self.provider = TracerProvider(resource=Resource.create(named))
        for name in exporter_names:
            self.provider.add_span_processor(BatchSpanProcessor(EXPORTERS[name]()))
        self.tracer = self.provider.get_tracer("shop")

    def shutdown(self) -> None:
        self.provider.shutdown()

    @contextmanager
    def server(self, method: str, route: str, headers: MutableMapping[str, str]) -> Iterator[ServerSpan]:
        span = self.tracer.start_span(f"{method} {route}", parent(headers.get(HEADER)), SpanKind.SERVER,
                                      {"http.request.method": method, "http.route": route})
        headers[HEADER] = context_of(span) or ""
        trace_id.set(format(span.get_span_context().trace_id, "032x"))
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                yield ServerSpan(span)
            except ShopError as exc:  # answered with its status code
                ServerSpan(span).set_status_code(exc.status_code)
                raise
            except Exception as exc:
                span.record_exception(exc)
                ServerSpan(span).set_status_code(500)
                raise

    def traceparent(self) -> Trace:
        span = trace.get_current_span()
        return context_of(span) if span.get_span_context().is_valid else None

    def _child(self, name: str, trace_header: Trace, kind: SpanKind, attributes: Attributes,
               start_time: int | None = None) -> Span | None:
        """A span continuing `trace_header`, or None without one: tracing continues the traces that requests
        start, and starts none in the middle of an order (a row or message from before tracing was on)."""
        if not trace_header:
            return None
        return self.tracer.start_span(name, parent(trace_header), kind, attributes, start_time=start_time)

    def send(self, queue: str, message_id: str, traces: Sequence[Trace]) -> AbstractContextManager[list[Trace]]:
        return spans_open([self._child(f"send {queue}", trace_header, SpanKind.PRODUCER,
                                       messaging(queue, "send", message_id)) for trace_header in traces])

    def process(self, queue: str, entries: Sequence[Consumed]) -> AbstractContextManager[list[Trace]]:
        started = time.time_ns()
        return spans_open([self._child(f"process {queue}", trace_header, SpanKind.CONSUMER,
                                       {**messaging(queue, "process", message_id), **order_of(order_id),
                                        "messaging.batch.message_count": len(entries)}, started)
                           for message_id, trace_header, order_id in entries])

    @contextmanager
    def steps(self, name: str, orders: Sequence[tuple[int, Trace]]) -> Iterator[list[Trace]]:
        started = time.time_ns()
        spans = [self._child(name, trace_header, SpanKind.INTERNAL, order_of(order_id), started)
                 for order_id, trace_header in orders]
        try:
            yield [context_of(span) if span else None for span in spans]
        finally:
            end(spans)


@contextmanager
def spans_open(spans: Sequence[Span | None]) -> Iterator[list[Trace]]:
    """The trace contexts of `spans` while the block runs; its exception recorded on each; each ended after."""
    try:
        yield [context_of(span) if span else None for span in spans]
    except BaseException as exc:
        failed(spans, exc)
        raise
    finally:
        end(spans)


def failed(spans: Sequence[Span | None], exc: BaseException) -> None:
    for span in filter(None, spans):
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, repr(exc)))


def end(spans: Sequence[Span | None]) -> None:
    for span in spans:
        if span is not None:
            span.end()


def order_of(order_id: int | None) -> dict[str, int]:
    """The `shop.order_id` attribute of a span about order `order_id` (none for None)."""
    return {} if order_id is None else {"shop.order_id": order_id}


def messaging(queue: str, operation: str, message_id: str | None) -> dict[str, str]:
    return {"messaging.system": "rabbitmq", "messaging.destination.name": queue,
            "messaging.operation.type": operation, "messaging.message.id": str(message_id)}
