"""Resends of `outbox_os` rows: held back while the queue still holds messages, sent once it is drained."""
import json

import pytest

from common.broker.messages import ORDER_REQUESTS
from common.runtime.config import load_settings
from harness.stack import free_port
from order_svc.bootstrap import OrderService
from tests.conftest import eventually
from tests.integration.conftest import running, stopped
from tests.integration.test_fast_path import crashed_after_commit
from tests.integration.test_order_service import outbox_row, place


@pytest.fixture
def quick_resends(io_loop, run_env):
    """An Order Service (no Payments Service: nothing consumes its requests) whose resends come due fast."""
    settings = load_settings({**run_env, "ORDER_SVC_PORT": str(free_port()), "PAYMENT_SVC_PORT": str(free_port()),
                              "RESEND_DELAY": "0.1", "RESEND_DELAY_MAX": "0.2"})
    service = running(io_loop, OrderService(settings))
    yield service
    stopped(io_loop, service)


async def purge_requests(service):
    channel = await service.broker.publisher.channel.get_underlay_channel()
    await channel.queue_purge(ORDER_REQUESTS)


async def take_requests(service):
    """Order ids of every payment request waiting in the queue, taking them out (as if they were lost): a message
    of one request is named by its id, one of several by its entries."""
    queue = await service.broker.publisher.channel.get_queue(ORDER_REQUESTS)
    taken = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        body = json.loads(message.body)
        taken.extend([entry["order_id"] for entry in body] if isinstance(body, list) else [int(message.message_id)])
    return taken


@pytest.mark.gen_test(timeout=30)
async def test_resend_is_held_back_while_the_queue_still_holds_the_request(quick_resends, user_id):
    """One copy: the immediate publish, counted sent once the broker confirmed it; every resend waits for the
    queue to drain (before confirmed publishes were counted, the relay's first send made it two)."""
    await purge_requests(quick_resends)
    order_id = (await place(quick_resends, user_id))["order_id"]

    async def resends_came_due():
        assert (await outbox_row(quick_resends, order_id))[0] >= 4
    await eventually(resends_came_due)
    assert (await take_requests(quick_resends)).count(order_id) == 1


@pytest.mark.gen_test(timeout=30)
async def test_an_order_never_published_goes_out_though_the_queue_is_busy(quick_resends, user_id):
    """The process died between COMMIT and publish: the relay's first send is not held back by other
    messages waiting (it used to be taken for a resend, and waited behind the backlog with doubling delays)."""
    await purge_requests(quick_resends)
    for filler in range(3):
        await quick_resends.broker.publisher.publish(ORDER_REQUESTS, b"{}", -1 - filler)
    order_id = await crashed_after_commit(quick_resends, user_id)

    async def sent():
        assert (await outbox_row(quick_resends, order_id))[0] >= 1
    await eventually(sent)
    assert order_id in await take_requests(quick_resends)


@pytest.mark.gen_test(timeout=30)
async def test_request_lost_from_the_queue_is_sent_again(quick_resends, user_id):
    await purge_requests(quick_resends)
    order_id = (await place(quick_resends, user_id))["order_id"]

    async def queued():
        assert order_id in await take_requests(quick_resends)
    await eventually(queued)  # published, and taken out of the queue: as good as lost
    await eventually(queued)  # the queue is empty, so the due resend goes out
