"""How the OpenTelemetry instrumentations for Tornado, aiopg and aio-pika behave with this code, unchanged.

Runs the real stack (harness.stack) with every process under `opentelemetry-instrument` (zero-code
instrumentation, configured by the standard OTEL_* variables) and an OTLP/HTTP receiver in this process,
places orders through the gateway (the first with a client `traceparent`), and prints CPU per order of each
process and, with exporting on, which spans exist and how the traces hang together.

    python3 -m venv .venv-otel
    .venv-otel/bin/pip install -r requirements.txt -r bench/otel-requirements.txt
    .venv-otel/bin/python -m bench.otel_probe plain 300   # not instrumented (the baseline)
    .venv-otel/bin/python -m bench.otel_probe none 300    # instrumented, OTEL_TRACES_EXPORTER=none
    .venv-otel/bin/python -m bench.otel_probe otlp 300    # instrumented, exported over OTLP/HTTP

A probe, not a test: it measures what an implementation of "one trace per order" starts from. The
implementation (common/observability/tracing.py, hand-made spans) is measured against it by bench/tracing_cost.py."""
import argparse
import json
import secrets
import sys
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from harness.client import call
from harness.stack import Stack, free_port
from tests.conftest import wait_for

KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
MODULES = {"order": ("order_svc", ["-m", "order_svc"]), "payment": ("payment_svc", ["-m", "payment_svc"]),
           "gateway": ("gateway", ["gateway.py"])}


class Receiver(BaseHTTPRequestHandler):
    """OTLP/HTTP (protobuf) trace endpoint that keeps each span's service, scope, name, ids and kind."""
    spans = []

    def do_POST(self):
        request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
        for resource_spans in request.resource_spans:
            service = next((attribute.value.string_value for attribute in resource_spans.resource.attributes
                            if attribute.key == "service.name"), "?")
            for scope in resource_spans.scope_spans:
                self.spans.extend(dict(service=service, scope=scope.scope.name.rsplit(".", 1)[-1], name=span.name,
                                       trace=span.trace_id.hex(), span=span.span_id.hex(),
                                       parent=span.parent_span_id.hex(), kind=KINDS[span.kind])
                                  for span in scope.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args):
        pass


def commands(mode):
    python = sys.executable
    instrument = str(Path(python).parent / "opentelemetry-instrument")
    return {kind: ([python] if mode == "plain" else ["env", f"OTEL_SERVICE_NAME={name}", instrument, python]) + args
            for kind, (name, args) in MODULES.items()}


def place_orders(stack, count, traceparent):
    assert call(stack.url, "POST", "/payments", {"user_id": 1})[0] == 201
    assert call(stack.url, "PUT", "/payments/1", {"amount": 1000000})[0] == 200
    before = {name: process.cpu_seconds() for name, process in stack.processes.items()}
    started = time.monotonic()
    first = call(stack.url, "POST", "/orders", {"user_id": 1, "amount": 1},
                 headers={"traceparent": traceparent})[1]["order_id"]
    with ThreadPoolExecutor(8) as pool:
        ids = [first, *pool.map(lambda _: call(stack.url, "POST", "/orders", {"user_id": 1, "amount": 1})[1]
                                ["order_id"], range(count - 1))]

    def all_finished():
        for order_id in (ids[0], ids[-1]):  # a user's orders settle in order_id order
            assert call(stack.url, "GET", f"/orders/{order_id}")[1]["order"]["status"] == "FINISHED"
    wait_for(all_finished, timeout=180)
    return {"seconds": round(time.monotonic() - started, 2),
            "cpu_ms_per_order": {name: round(1000 * (process.cpu_seconds() - before[name]) / count, 2)
                                 for name, process in stack.processes.items()}}


def describe(spans, client_trace):
    by_id = {span["span"]: span for span in spans}
    services = defaultdict(set)
    for span in spans:
        services[span["trace"]].add(span["service"])

    def parent(span):
        return by_id.get(span["parent"], {}).get("name", "missing") if span["parent"] else "(root)"
    print(f"{len(spans)} spans in {len(services)} traces")
    for key, count in Counter((s["service"], s["scope"], s["kind"], s["name"][:40], parent(s)[:30])
                              for s in spans).most_common(25):
        print(f"  {count:6d}  service={key[0]} scope={key[1]} kind={key[2]} name={key[3]!r} parent={key[4]!r}")
    print("client trace:", sorted(Counter((s["service"], s["name"]) for s in spans if s["trace"] == client_trace)))
    print("services per trace:", Counter(tuple(sorted(v)) for v in services.values()).most_common())


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.otel_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("plain", "none", "otlp"))
    parser.add_argument("orders", type=int, nargs="?", default=300)
    args = parser.parse_args()
    receiver = ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    env = {"OTEL_TRACES_EXPORTER": "otlp" if args.mode == "otlp" else "none", "OTEL_METRICS_EXPORTER": "none",
           "OTEL_LOGS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
           "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_port}",
           "OTEL_BSP_SCHEDULE_DELAY": "200", "LOG_LEVEL": "WARNING"}
    client_trace = secrets.token_hex(16)
    with Stack(prefix="shop_otel", extra_env=env, commands=commands(args.mode)) as stack:
        for process in stack.processes.values():
            process.wait_ready()
        figures = place_orders(stack, args.orders, f"00-{client_trace}-{secrets.token_hex(8)}-01")
        time.sleep(1.5)  # the batch span processors' last exports
        errors = {name: process.log()[-2000:] for name, process in stack.processes.items()
                  if "Traceback" in process.log()}
    receiver.shutdown()
    print(json.dumps({"mode": args.mode, "orders": args.orders, **figures}))
    for name, tail in errors.items():
        print(f"--- {name} logged a traceback:\n{tail}")
    if args.mode == "otlp":
        describe(Receiver.spans, client_trace)


if __name__ == "__main__":
    main()
