"""Two instances of each service behind one gateway, under concurrent load."""
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from harness.client import call
from harness.invariants import check_invariants, wait_until_settled
from harness.stack import Stack

USERS = range(1, 9)


@pytest.fixture
def replicated_stack():
    with Stack(prefix="shop_e2e", replicas=2) as stack:
        yield stack


def metric_total(process, name, **labels):
    """Sum of a counter's samples in `process`'s /metrics that match `labels`."""
    with urllib.request.urlopen(process.admin_url + "/metrics") as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_two_replicas_each_share_load_and_never_process_a_row_twice(replicated_stack):
    url = replicated_stack.url
    for user in USERS:
        call(url, "POST", "/payments", {"user_id": user})
        assert call(url, "PUT", f"/payments/{user}", {"amount": 100})[0] == 200
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: call(url, "POST", "/orders", {"user_id": USERS[i % 8], "amount": 15}),
                                range(200)))
    assert all(code == 201 for code, _ in replies)
    order_dsn, payment_dsn = replicated_stack.order_dsn, replicated_stack.payment_dsn
    assert wait_until_settled(order_dsn, timeout=30, payment_db=payment_dsn) is not None
    report = check_invariants(order_dsn, payment_dsn, {u: Decimal(100) for u in USERS},
                              [body["order_id"] for _, body in replies])
    assert report.ok, report.table()

    orders, payments = [replicated_stack[n] for n in ("order", "order1")], \
        [replicated_stack[n] for n in ("payment", "payment1")]
    assert all(metric_total(p, "shop_http_request_duration_seconds_count", method="POST") > 0 for p in orders)
    # Every outbox row was published exactly once in all: no two workers took the same row.
    assert sum(metric_total(p, "shop_outbox_rows_published_total", queue="outbox_os") for p in orders) == 200
    assert sum(metric_total(p, "shop_outbox_rows_published_total", queue="outbox_ps") for p in payments) == 200


@pytest.fixture
def contended_stack():
    """Replicas whose relays resend a request 0.2 s after it was first sent, poll only (FAST_PATH=0): an order
    waits up to a poll interval (3 s) in the Payments inbox, so most requests are sent again while pending, by
    either Order replica's relay, and arrive twice (or more) at either Payments replica."""
    env = {"FAST_PATH": "0", "RESEND_DELAY": "0.2", "RESEND_DELAY_MAX": "0.4"}
    stack = Stack(prefix="shop_e2e", replicas=2, extra_env=env)
    for name in ("payment", "payment1"):
        # Payments answers only at its polls, 3 s apart: every request waits long enough to be sent again
        # by the Order relays, which poll every second (on a quiet machine a 1 s poll answered too soon).
        stack[name].env["POLL_INTERVAL"] = "3"
    # The Order relays poll at different intervals, so that neither always polls first: started within a few
    # ms of each other at the same interval, the first one's polls came just before the other's every time
    # (jitter of 5 % did not part them within the test), and it found every due row (seen [0, 288] published).
    stack["order1"].env["POLL_INTERVAL"] = "0.7"
    with stack:
        yield stack


# Orders placed over this many seconds: several polls (1 s) of each Order relay.
PLACING_SECONDS = 6


def test_requests_delivered_twice_by_contending_relays_debit_once(contended_stack):
    stack, url = contended_stack, contended_stack.url
    for user in USERS:
        call(url, "POST", "/payments", {"user_id": user})
        assert call(url, "PUT", f"/payments/{user}", {"amount": 100})[0] == 200

    def place(i):
        # Spread over several polls: each poll of either relay finds the orders committed since the last poll
        # of any relay, so both send first copies (a burst placed within one poll goes to one relay alone).
        time.sleep(PLACING_SECONDS * 8 / 80)
        return call(url, "POST", "/orders", {"user_id": USERS[i % 8], "amount": 15})
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(place, range(80)))
    assert all(code == 201 for code, _ in replies)
    assert wait_until_settled(stack.order_dsn, timeout=60, payment_db=stack.payment_dsn) is not None

    orders, payments = [stack[n] for n in ("order", "order1")], [stack[n] for n in ("payment", "payment1")]
    published = [metric_total(p, "shop_outbox_rows_published_total", queue="outbox_os") for p in orders]
    consumed = [metric_total(p, "shop_entries_consumed_total", queue="outbox_os") for p in payments]
    # Both relays took rows, and resent requests while they were pending: more published and consumed than
    # there are orders, by both Payments replicas. Which relay resends is not asserted: a row is due again
    # RESEND_DELAY after its send, so the relay whose poll comes first after that takes it; with polls 1 s
    # apart and a 0.4 s delay, a relay polling up to ~0.4 s after the other's poll never finds a resend due,
    # and one relay sends them all (seen [80, 0] and [0, 240] with a burst of orders). That is the due time
    # working, not lost contention: SKIP LOCKED only keeps two polls at the same moment apart.
    assert all(n > 0 for n in published) and sum(published) > len(replies), published
    assert all(n > 0 for n in consumed) and sum(consumed) > len(replies), consumed
    # ... and harmless: every order debited once (the ledger's debits are exactly the FINISHED orders), money
    # conserved to the cent.
    report = check_invariants(stack.order_dsn, stack.payment_dsn, {u: Decimal(100) for u in USERS},
                              [body["order_id"] for _, body in replies])
    assert report.ok, report.table()


def test_gateway_skips_a_dead_replica(replicated_stack):
    replicated_stack["order"].kill()
    replicated_stack["payment1"].kill()
    assert [call(replicated_stack.url, "GET", "/orders?limit=1")[0] for _ in range(6)] == [200] * 6
    assert [call(replicated_stack.url, "GET", "/payments/1")[0] for _ in range(6)] == [404] * 6
