"""Resend backoff, read from the `outbox_os` row while the Payments Service is away: each resend is scheduled
twice as far out as the one before, up to RESEND_DELAY_MAX."""
import pytest

from common.runtime.config import load_settings
from harness.stack import free_port
from order_svc.bootstrap import OrderService
from tests.conftest import eventually
from tests.integration.conftest import running, stopped
from tests.integration.test_order_service import place

FIRST, CAP = 0.4, 1.6


@pytest.fixture
def backing_off(io_loop, run_env):
    """An Order Service alone (nothing answers its requests), polling often so a due row is taken at once."""
    settings = load_settings({**run_env, "ORDER_SVC_PORT": str(free_port()), "PAYMENT_SVC_PORT": str(free_port()),
                              "RESEND_DELAY": str(FIRST), "RESEND_DELAY_MAX": str(CAP), "POLL_INTERVAL": "0.05"})
    service = running(io_loop, OrderService(settings))
    yield service
    stopped(io_loop, service)


async def schedule(service, order_id):
    """(attempts, seconds until the row is due), by the database's clock."""
    async def read(cur):
        await cur.execute("SELECT attempts, EXTRACT(EPOCH FROM next_attempt_at - clock_timestamp()) "
                          "FROM outbox_os WHERE order_id = %s", (order_id,))
        return await cur.fetchone()
    return await service.db.run(read)


@pytest.mark.gen_test(timeout=60)
async def test_resend_delay_doubles_per_attempt_up_to_its_cap(backing_off, user_id):
    order_id = (await place(backing_off, user_id))["order_id"]
    # Seen within ~0.05 s of each update, the time left is a little under that attempt's delay: far above
    # half of it. The delays, 0.4 / 0.8 / 1.6 / 1.6 / 1.6 s, are thus told apart whatever the machine's load.
    seen = {}

    async def reaches(attempts):
        current, left = await schedule(backing_off, order_id)
        seen.setdefault(current, float(left))
        assert current >= attempts
    await eventually(lambda: reaches(5), timeout=40)
    for attempts in range(2, 6):
        assert attempts in seen, f"attempt {attempts} never observed: {seen}"
        delay = min(FIRST * 2 ** (attempts - 1), CAP)
        assert delay / 2 < seen[attempts] <= delay, (attempts, seen)
