import pytest

from harness.issuer import DevIssuer
from harness.stack import Stack


def assert_no_traceback(stack):
    """Nothing went wrong behind the answers either: no handler or worker crashed."""
    for process in stack.processes.values():
        assert "Traceback" not in process.log(), process.log()[-5000:]


@pytest.fixture(scope="module")
def stack():
    """The gateway and both services as real processes, shared by a module's tests."""
    with Stack(prefix="shop_e2e") as running:
        yield running
        assert_no_traceback(running)


@pytest.fixture(scope="module")
def issuer():
    """The development token issuer (panva's oidc-provider), one per module."""
    with DevIssuer() as running:
        yield running


@pytest.fixture(scope="module")
def authenticated_stack(issuer):
    """A stack with AUTH_MODE=jwt against `issuer`, ready: its services have loaded the issuer's keys."""
    with Stack(prefix="shop_auth", extra_env=issuer.env()) as running:
        for name in ("order", "payment"):
            running[name].wait_ready()
        yield running
        assert_no_traceback(running)


@pytest.fixture
def own_stack():
    """A stack a test may kill parts of."""
    with Stack(prefix="shop_e2e") as running:
        yield running
