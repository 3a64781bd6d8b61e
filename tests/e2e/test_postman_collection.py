"""The Postman collection, run by newman against the real stack, as a user of Postman would run it."""
from harness.newman import check_seed_walkthrough, fresh_user_id, run_collection


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
