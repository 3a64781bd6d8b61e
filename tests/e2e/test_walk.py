"""The walk of an order's amount (`python -m harness.walk`, which prints the hops and their count): the real
processes show every hop of it, from the gateway to the debit and back, through the milestones below in this
order, with the amount written with its order once and debited once. How many hops the walk takes is a
measurement, not a rule: this test records it (the `hops` property of its report) and `python -m harness.walk`
prints it."""
from collections import Counter

from harness.walk import walk

# Where the amount must be seen, in this order: read at the gateway, parsed, written with its order, published,
# read from the message, then decided, debited and written to the ledger (one statement: PostgresPayments.settle).
MILESTONES = [("gateway", "ProxiedRequest.data_received"), ("order", "parse_amount"),
              ("order", "PostgresOrders.insert_orders"), ("order", "Publisher.publish"),
              ("payment", "PaymentRequest.from_entry"), ("payment", "PostgresPayments.settle")]
# Steps a walk takes once, however the code between them is arranged: the order is written once, and the
# account debited with its ledger row once.
ONCE = [("order", "PostgresOrders.insert_orders"), ("payment", "PostgresPayments.settle")]


def test_the_amount_walks_from_the_request_to_a_single_debit_and_back_to_the_client(record_property):
    hops, status = walk({})
    assert status == "FINISHED"
    steps = [(service, function) for _, service, function, _, _ in hops]
    record_property("hops", len(hops))
    positions = [steps.index(milestone) for milestone in MILESTONES if milestone in steps]
    assert len(positions) == len(MILESTONES), f"missing: {[m for m in MILESTONES if m not in steps]}"
    assert positions == sorted(positions), steps
    taken = Counter(steps)
    assert {step: taken[step] for step in ONCE} == dict.fromkeys(ONCE, 1), steps
    assert ("gateway", "ProxiedRequest.reply") in steps  # the answer, with the amount, back to the client
