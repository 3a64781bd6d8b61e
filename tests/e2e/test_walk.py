"""The walk of an order's amount (`python -m harness.walk`, docs/architecture.md "The walk of an amount"): the real
processes show every hop of it, from the gateway to the debit and back, and it stays no longer than the docs say."""
from harness.walk import walk

# docs/architecture.md "The walk of an amount": 49 hops on the default path. A change that lengthens the walk shows
# up here: shorten it again, or update the docs' walk and this figure with the reason.
MOST_HOPS = 49

# Where the amount must be seen, in this order: read at the gateway, parsed, written with its order, published,
# read from the message, debited and written to the ledger.
MILESTONES = [("gateway", "ProxiedRequest.data_received"), ("order", "parse_amount"), ("order", "insert_orders"),
              ("order", "Publisher.publish"), ("payment", "PaymentRequest.from_entry"), ("payment", "settle"),
              ("payment", "record_debits")]


def test_the_amount_walks_from_the_request_to_the_debit_in_no_more_hops_than_the_docs_say():
    hops, status = walk({})
    assert status == "FINISHED"
    steps = [(service, function) for _, service, function, _, _ in hops]
    positions = [steps.index(milestone) for milestone in MILESTONES if milestone in steps]
    assert len(positions) == len(MILESTONES), f"missing: {[m for m in MILESTONES if m not in steps]}"
    assert positions == sorted(positions), steps
    assert ("gateway", "ProxiedRequest.reply") in steps  # the answer, with the amount, back to the client
    assert len(hops) <= MOST_HOPS, "\n".join(f"{service} {function}" for service, function in steps)
