import pytest

from harness.stack import Stack


@pytest.fixture(scope="module")
def stack():
    """The gateway and both services as real processes, shared by a module's tests."""
    with Stack(prefix="shop_e2e") as running:
        yield running


@pytest.fixture
def own_stack():
    """A stack a test may kill parts of."""
    with Stack(prefix="shop_e2e") as running:
        yield running
