"""Several outbox rows in one message (ENTRIES_PER_MESSAGE), on the real broker and databases: each entry is
processed and deduplicated as a message of its own was, a malformed one is dead-lettered alone, and a resend
carries only the rows still unanswered."""
import json
from decimal import Decimal

import pytest

from common.broker.messages import ORDER_REQUESTS, PAYMENT_RESULTS, PaymentRequest, PaymentResult
from common.broker.packing import pack
from common.runtime.config import load_settings
from harness.stack import free_port
from order_svc.bootstrap import OrderService
from tests.conftest import eventually
from tests.integration.conftest import running, stopped
from tests.integration.test_dead_letter_replay import account_with, dead_letters_cli, dead_letters_of
from tests.integration.test_order_service import outbox_row, place
from tests.integration.test_payment_service import balance, inbox_row, ledger
from tests.integration.test_resend import purge_requests


def packed(*entries):
    """The body of a message of these entries (dicts, or JSON text taken as it is)."""
    texts = [entry if isinstance(entry, str) else json.dumps(entry) for entry in entries]
    return f"[{', '.join(texts)}]".encode()


async def dead_letter_of(run_env, letter_id):
    found = []

    async def there():
        found[:] = await dead_letters_of(run_env, letter_id)
        assert len(found) == 1
    await eventually(there, timeout=20)
    return found[0]


@pytest.mark.gen_test(timeout=90)
async def test_a_message_with_one_malformed_entry_settles_the_others_and_dead_letters_that_entry_alone(
        payment_service, run_env, user_id, dead_letter_ids):
    await account_with(payment_service, user_id, 10)
    first, second = user_id, user_id + 1
    malformed = f'{{"order_id": {user_id + 2}, "user_id": {user_id}, "amount": "-5"}}'
    message_id = f"{first}+2"
    dead_letter_ids.update({message_id, f"{message_id}#1"})
    body = packed(PaymentRequest(first, user_id, Decimal(3)).entry(), malformed,
                  PaymentRequest(second, user_id, Decimal(4)).entry())
    await payment_service.broker.publisher.publish(ORDER_REQUESTS, body, message_id)

    async def both_settled():
        assert [await inbox_row(payment_service, order_id) for order_id in (first, second)] == \
            [("FINISHED", True)] * 2
    await eventually(both_settled)
    assert await balance(payment_service, user_id) == Decimal(3)
    letter = await dead_letter_of(run_env, f"{message_id}#1")
    assert letter.message.body == malformed.encode()  # that entry alone, as it was sent
    headers = letter.message.headers
    assert (headers["x-shop-reason"], headers["x-shop-original-queue"], headers["x-shop-deaths"]) == \
        ("entry 1: 'amount' must be greater than 0.", ORDER_REQUESTS, 1)
    assert await dead_letters_of(run_env, message_id) == []  # the message itself was processed, not dead-lettered
    assert await inbox_row(payment_service, user_id + 2) is None

    # The operators' command handles it like any dead letter: replayed, still malformed, back with a second death.
    code, out, err = await dead_letters_cli(run_env, "replay", ORDER_REQUESTS, "--id", f"{message_id}#1")
    assert (code, err) == (0, "") and f"replayed {message_id}#1 to {ORDER_REQUESTS}" in out

    async def dead_again():
        [again] = await dead_letters_of(run_env, f"{message_id}#1")
        assert (again.info.deaths, again.info.reason, again.info.first_reason) == \
            (2, "'amount' must be greater than 0.", "entry 1: 'amount' must be greater than 0.")
    await eventually(dead_again, timeout=20)


@pytest.mark.gen_test(timeout=60)
async def test_an_order_in_two_messages_of_several_entries_debits_once(payment_service, user_id):
    await account_with(payment_service, user_id, 100)
    shared, only_first, only_second = user_id, user_id + 1, user_id + 2
    entry = {order_id: PaymentRequest(order_id, user_id, Decimal(10)).entry()
             for order_id in (shared, only_first, only_second)}
    publisher = payment_service.broker.publisher

    async def settled(*order_ids):
        assert [await inbox_row(payment_service, order_id) for order_id in order_ids] == \
            [("FINISHED", True)] * len(order_ids)
    await publisher.publish(ORDER_REQUESTS, packed(entry[only_first], entry[shared]), f"{only_first}+1")
    await eventually(lambda: settled(only_first, shared))
    # The second message meets the shared order settled (a batch of its own): it only re-sends its status.
    await publisher.publish(ORDER_REQUESTS, packed(entry[shared], entry[only_second]), f"{shared}+1")
    await eventually(lambda: settled(only_second))
    assert await balance(payment_service, user_id) == Decimal(70)
    assert await ledger(payment_service, shared) == [("debit", Decimal("10.00"))]


@pytest.fixture
def quick_resends(io_loop, run_env):
    """An Order Service (no Payments Service: nothing consumes its requests) whose resends come due after 1 s."""
    settings = load_settings({**run_env, "ORDER_SVC_PORT": str(free_port()), "PAYMENT_SVC_PORT": str(free_port()),
                              "RESEND_DELAY": "1", "RESEND_DELAY_MAX": "1", "ENTRIES_PER_MESSAGE": "20"})
    service = running(io_loop, OrderService(settings))
    yield service
    stopped(io_loop, service)


async def take_entries(service):
    """[order ids of each message] waiting in the request queue, taking them out (as if they were lost)."""
    queue = await service.broker.publisher.channel.get_queue(ORDER_REQUESTS)
    taken = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        body = json.loads(message.body)
        taken.append([entry["order_id"] for entry in (body if isinstance(body, list) else [body])])
    return taken


@pytest.mark.gen_test(timeout=60)
async def test_a_resend_carries_only_the_rows_still_unanswered(quick_resends, user_id):
    await purge_requests(quick_resends)
    orders = [(await place(quick_resends, user_id))["order_id"] for _ in range(4)]
    # Two of them answered in one message of two results, before their first resend is due.
    answered = orders[1:3]
    await quick_resends.broker.publisher.publish(
        PAYMENT_RESULTS, pack([PaymentResult(order_id, "FINISHED").entry() for order_id in answered], [None] * 2),
        f"{answered[0]}+1")

    async def answers_applied():
        assert [await outbox_row(quick_resends, order_id) for order_id in answered] == [None, None]
    await eventually(answers_applied)
    await take_entries(quick_resends)  # the first sends, and anything resent before the answers were applied
    resent = []

    async def both_resent():
        resent.extend(await take_entries(quick_resends))
        assert {order_id for message in resent for order_id in message} >= {orders[0], orders[3]}
    await eventually(both_resent, timeout=20)
    assert not set(answered) & {order_id for message in resent for order_id in message}, resent
