"""The Postman collection, run by newman against the real stack, as a user of Postman would run it."""
from harness.newman import fresh_user_id, run_collection

# The seed's walk-through: 1 and 4 are sent twice; 7 repeats only while the payment is still in flight.
EXPECTED_SEQUENCE = [
    ("1 Create Account", 201), ("1 Create Account", 409), ("2 Top Up Account", 200), ("3 Get Balance", 200),
    ("4 Create Order", 201), ("4 Create Order", 201), ("5 Get All Orders", 200), ("6 Get Orders of the user", 200),
]


def check_seed_walkthrough(run):
    """Assert a newman run passed every assertion and followed the seed's sequence of requests."""
    assert run.ok, f"newman failed: {run.failures}\n{run.output[-4000:]}"
    assert run.requests[:len(EXPECTED_SEQUENCE)] == EXPECTED_SEQUENCE
    status_polls = run.requests[len(EXPECTED_SEQUENCE):]
    assert status_polls and all(request == ("7 Get Order Status", 200) for request in status_polls)
    # Per request: its envelope check and its own checks; 7 adds the final statuses of both orders.
    assert run.assertions >= 2 * len(run.requests) + 2


def test_collection_runs_the_seed_walkthrough_twice_on_one_stack(stack):
    for _ in range(2):
        check_seed_walkthrough(run_collection(stack.url, fresh_user_id()))


def test_collection_fails_when_the_account_already_exists(stack):
    user_id = fresh_user_id()
    check_seed_walkthrough(run_collection(stack.url, user_id))

    again = run_collection(stack.url, user_id)

    assert not again.ok
    assert ("1 Create Account", "1 Create Account: 201 with a zero-balance account") in \
        [(name, test) for name, test, _ in again.failures]
