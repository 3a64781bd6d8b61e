import json
from decimal import Decimal

import pytest

from common.broker.dead_letter_headers import dead_letter_queue
from common.broker.messages import ORDER_REQUESTS, PAYMENT_RESULTS, PaymentRequest
from tests.conftest import eventually
from tests.integration.test_payment_service import inbox_row


async def dead_letters(broker, queue, message_id="poison"):
    """Drain the queue's dead-letter queue; returns the bodies of the messages with `message_id` (other tests of
    this run dead-letter into the same queues)."""
    dlq = await broker.publisher.channel.get_queue(dead_letter_queue(queue))
    bodies = []
    while (message := await dlq.get(fail=False)) is not None:
        await message.ack()
        if message.message_id == message_id:
            bodies.append(message.body)
    return bodies


@pytest.mark.gen_test(timeout=30)
async def test_malformed_messages_are_dead_lettered_while_good_ones_flow(payment_service, order_service, user_id):
    poison_requests = [b"{not json", json.dumps({"order_id": user_id}).encode(),
                       json.dumps({"order_id": user_id, "user_id": 1, "amount": "-5"}).encode()]
    poison_result = json.dumps({"order_id": 2**62 + user_id, "status": "FINISHED"}).encode()
    for body in poison_requests:
        await payment_service.broker.publisher.publish(ORDER_REQUESTS, body, "poison")
    await payment_service.broker.publisher.publish(PAYMENT_RESULTS, poison_result, "poison")
    good_order = user_id + 1
    good = PaymentRequest(good_order, user_id, Decimal(1)).encode()
    await payment_service.broker.publisher.publish(ORDER_REQUESTS, good, good_order)

    async def good_one_settled():
        assert await inbox_row(payment_service, good_order) == ("CANCELLED", True)
    await eventually(good_one_settled)

    seen = {ORDER_REQUESTS: [], PAYMENT_RESULTS: []}

    async def all_poison_dead_lettered():
        for queue in seen:
            seen[queue] += await dead_letters(payment_service.broker, queue)
        assert sorted(seen[ORDER_REQUESTS]) == sorted(poison_requests)
        assert poison_result in seen[PAYMENT_RESULTS]
    await eventually(all_poison_dead_lettered)
