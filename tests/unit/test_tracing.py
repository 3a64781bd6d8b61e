"""common.observability.tracing's start-up decision, each in a fresh interpreter (what it imports is the point),
and the trace id in log lines."""
import json
import logging
import subprocess
import sys

from common.observability import tracing
from common.runtime.logs import JsonFormatter, RequestIdFilter, trace_id
from harness.stack import ROOT


def run(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_with_the_exporter_none_opentelemetry_is_never_imported():
    done = run("import sys\nfrom common.runtime import lifecycle\nfrom common.observability import tracing\n"
               "tracing.start({'OTEL_TRACES_EXPORTER': 'none'}, 'x')\n"
               "assert not tracing.current.enabled\n"
               "print(sorted(name for name in sys.modules if name.startswith('opentelemetry')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_console_exporter_turns_tracing_on():
    done = run("from common.observability import tracing\n"
               "tracing.start({'OTEL_TRACES_EXPORTER': 'none, console'}, 'x')\n"
               "assert tracing.current.enabled\ntracing.stop()")
    assert done.returncode == 0, done.stderr


def test_an_unknown_exporter_is_a_configuration_error_that_names_it():
    done = run("from common.observability import tracing\nfrom common.runtime.config import ConfigurationError\ntry:\n"
               "    tracing.start({'OTEL_TRACES_EXPORTER': 'zipkin'}, 'x')\nexcept ConfigurationError as exc:\n"
               "    print(exc)")
    assert done.returncode == 0, done.stderr
    assert "unknown exporter zipkin" in done.stdout


def test_a_log_line_names_the_trace_of_its_request_or_the_one_it_is_given():
    def line(**extra):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "order_id=%s re-sent", (7,), None)
        record.__dict__.update(extra)
        RequestIdFilter().filter(record)
        return json.loads(JsonFormatter().format(record))

    assert "trace_id" not in line()  # tracing off, or no request: nothing to name
    token = trace_id.set("4bf92f3577b34da6a3ce929d0e0e4736")
    try:
        assert line()["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        given = tracing.trace_id_of("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        assert line(trace_id=given)["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    finally:
        trace_id.reset(token)
    assert tracing.trace_id_of(None) == "-"
