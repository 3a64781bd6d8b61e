"""The Postman collection, run by newman against the real stack with authentication on (the development issuer,
panva's oidc-provider), as a user of Postman would run it: its pre-request script gets each run's access token."""
import pytest

from harness.newman import check_seed_walkthrough, fresh_user_id, run_collection


@pytest.fixture(scope="module")
def stack(authenticated_stack):
    return authenticated_stack


def run(stack, issuer, user_id, **options):
    return run_collection(stack.url, user_id, issuer_url=issuer.url, client_secret=issuer.secret, **options)


def test_collection_runs_the_seed_walkthrough_twice_on_one_stack(stack, issuer):
    for _ in range(2):
        user_id = fresh_user_id()
        done = run(stack, issuer, user_id)
        check_seed_walkthrough(done)
        passed = {test for _, test, ok in done.tests if ok}
        assert {f"An access token for user-{user_id} from {issuer.url}/token",
                "A request without a token: 401 with WWW-Authenticate: Bearer"} <= passed


def test_collection_fails_when_the_account_already_exists(stack, issuer):
    user_id = fresh_user_id()
    check_seed_walkthrough(run(stack, issuer, user_id))

    again = run(stack, issuer, user_id)

    assert not again.ok
    assert ("1 Create Account", "1 Create Account: 201 with a zero-balance account") in \
        [(name, test) for name, test, _ in again.failures]


@pytest.mark.parametrize("credentials", [{"client_secret": "not-the-secret"}, {"issuer_url": ""}],
                         ids=["wrong client secret", "no issuer"])
def test_collection_without_a_token_is_refused(stack, issuer, credentials):
    user_id = fresh_user_id()
    done = run_collection(stack.url, user_id, **{"issuer_url": issuer.url, "client_secret": issuer.secret,
                                                 **credentials})

    assert not done.ok
    assert done.requests[0] == ("1 Create Account", 401)
    assert {code for _, code in done.requests} == {401}, done.requests
    if credentials.get("client_secret"):
        assert ("1 Create Account", f"An access token for user-{user_id} from {issuer.url}/token") in \
            [(name, test) for name, test, _ in done.failures]
