"""One trace per order (docs/operations.md "Tracing"): the three processes with OTEL_TRACES_EXPORTER=console, whose
spans (one JSON object per line on stdout, in each process's log) are read back and followed by their parent ids."""
import json
import secrets

import pytest

from harness.client import call
from harness.stack import Stack
from tests.conftest import wait_for

TRACING = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"}

# The order's way, span by span: (service, span name, kind), each the parent of the next.
ORDER_TRACE = [
    ("gateway", "POST /orders", "SpanKind.SERVER"),
    ("order_svc", "POST /orders", "SpanKind.SERVER"),
    ("order_svc", "send outbox_os", "SpanKind.PRODUCER"),
    ("payment_svc", "process outbox_os", "SpanKind.CONSUMER"),
    ("payment_svc", "settle payment", "SpanKind.INTERNAL"),
    ("payment_svc", "send outbox_ps", "SpanKind.PRODUCER"),
    ("order_svc", "process outbox_ps", "SpanKind.CONSUMER"),
]


def spans(stack):
    """Every span the stack's processes exported so far."""
    found = []
    for process in stack.processes.values():
        for line in process.log().splitlines():
            if line.startswith('{"name"'):
                found.append(json.loads(line))
    return found


def chain(stack, trace_id, client_span):
    """The spans of `trace_id`, from the one whose parent is `client_span`, each followed by its child."""
    of_trace = [s for s in spans(stack) if s["context"]["trace_id"] == f"0x{trace_id}"]
    path, parent = [], f"0x{client_span}"
    while children := [s for s in of_trace if s["parent_id"] == parent]:
        assert len(children) == 1, children
        path.append(children[0])
        parent = children[0]["context"]["span_id"]
    return path


def steps(path):
    return [(s["resource"]["attributes"]["service.name"], s["name"], s["kind"]) for s in path]


def place_traced_order(stack):
    """(order id, trace id, client span id) of an order placed with a client `traceparent`."""
    user_id = secrets.randbelow(10**9) + 1
    assert call(stack.url, "POST", "/payments", {"user_id": user_id})[0] == 201
    assert call(stack.url, "PUT", f"/payments/{user_id}", {"amount": 100})[0] == 200
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    status, body = call(stack.url, "POST", "/orders", {"user_id": user_id, "amount": 10},
                        headers={"traceparent": f"00-{trace_id}-{client_span}-01"})
    assert status == 201, body
    return body["order_id"], trace_id, client_span


def wait_until_finished(stack, order_id, timeout=30):
    def finished():
        assert call(stack.url, "GET", f"/orders/{order_id}")[1]["order"]["status"] == "FINISHED"
    wait_for(finished, timeout)


@pytest.fixture
def traced_stack():
    stack = Stack(prefix="shop_trace", extra_env=TRACING)
    yield stack
    stack.close()


def test_one_trace_follows_an_order_from_its_post_to_its_final_status(traced_stack):
    stack = traced_stack.start()
    order_id, trace_id, client_span = place_traced_order(stack)
    wait_until_finished(stack, order_id)
    wait_for(lambda: assert_steps(chain(stack, trace_id, client_span), ORDER_TRACE), timeout=15)
    path = chain(stack, trace_id, client_span)
    assert path[1]["attributes"]["shop.order_id"] == order_id
    assert path[-1]["attributes"]["shop.order_id"] == order_id
    # The log lines about the order name its trace beside the request id.
    placed = [line for line in stack["order"].log().splitlines() if f"order_id={order_id} placed" in line]
    assert len(placed) == 1 and trace_id in placed[0], placed


def test_orders_sent_after_a_restart_in_one_message_each_keep_their_own_trace(traced_stack):
    # No fast path and no poll: the orders wait in the outbox until the restarted process's first relay run,
    # which sends them in one message (ENTRIES_PER_MESSAGE); the Payments consumer settles them in one batch and
    # publishes their results together, in one message too.
    traced_stack["order"].env.update(FAST_PATH="0", POLL_INTERVAL="3600")
    stack = traced_stack.start()
    orders = [place_traced_order(stack) for _ in range(3)]
    for _, trace_id, client_span in orders:
        wait_for(lambda t=trace_id, c=client_span: assert_steps(chain(stack, t, c), ORDER_TRACE[:2]))
    stack["order"].stop()
    stack.restart("order")
    for order_id, trace_id, client_span in orders:
        wait_until_finished(stack, order_id)
        wait_for(lambda t=trace_id, c=client_span: assert_steps(chain(stack, t, c), ORDER_TRACE), timeout=15)
    paths = [chain(stack, trace_id, client_span) for _, trace_id, client_span in orders]
    for path in paths:
        instance = [s["resource"]["attributes"]["service.instance.id"] for s in path]
        assert instance[1] != instance[2], "the request was sent by the process that placed it, not after a restart"
    # The requests shared one message ("<first order>+2"), each in its own trace.
    request_messages = {path[2]["attributes"]["messaging.message.id"] for path in paths}
    assert request_messages == {f"{orders[0][0]}+2"}, request_messages
    assert [path[-1]["attributes"]["shop.order_id"] for path in paths] == [order_id for order_id, *_ in orders]


def assert_steps(path, expected):
    assert steps(path) == expected
