import pytest

from harness.stack import Stack


@pytest.fixture(scope="module")
def stack():
    """The gateway and both services as real processes, shared by a module's tests."""
    with Stack(prefix="shop_e2e") as running:
        yield running
        # Nothing went wrong behind the answers either: no handler or worker crashed.
        for process in running.processes.values():
            assert "Traceback" not in process.log(), process.log()[-5000:]


@pytest.fixture
def own_stack():
    """A stack a test may kill parts of."""
    with Stack(prefix="shop_e2e") as running:
        yield running
