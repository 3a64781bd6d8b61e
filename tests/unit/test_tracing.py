"""common.tracing's start-up decision, each in a fresh interpreter (what it imports is the point)."""
import subprocess
import sys

from harness.stack import ROOT


def run(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_with_the_exporter_none_opentelemetry_is_never_imported():
    done = run("import sys\nfrom common import lifecycle, tracing\n"
               "tracing.start({'OTEL_TRACES_EXPORTER': 'none'}, 'x')\n"
               "assert not tracing.current.enabled\n"
               "print(sorted(name for name in sys.modules if name.startswith('opentelemetry')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_console_exporter_turns_tracing_on():
    done = run("from common import tracing\ntracing.start({'OTEL_TRACES_EXPORTER': 'none, console'}, 'x')\n"
               "assert tracing.current.enabled\ntracing.stop()")
    assert done.returncode == 0, done.stderr


def test_an_unknown_exporter_is_a_configuration_error_that_names_it():
    done = run("from common import tracing\nfrom common.config import ConfigurationError\ntry:\n"
               "    tracing.start({'OTEL_TRACES_EXPORTER': 'zipkin'}, 'x')\nexcept ConfigurationError as exc:\n"
               "    print(exc)")
    assert done.returncode == 0, done.stderr
    assert "unknown exporter zipkin" in done.stdout
