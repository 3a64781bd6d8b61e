"""The `multiple` ack is taken only when every delivery tag of the batch is strictly above the one before: the
cases the mutants of `BatchConsumer._ack_batch` left untested (docs/testing.md, "Mutation testing")."""
import pytest

from common.broker.consumer import BatchConsumer
from tests.unit.fakes import PUBLISHERS, FakeDeadLetters, FakeMessage, Number, received


async def ack_outcomes(tags):
    async def handle(items):
        return {}
    messages = [FakeMessage(tag) for tag in tags]
    batches = BatchConsumer("q", Number, handle_batch=handle, batch_size=10, dead_letters_via=FakeDeadLetters(),
                            publishers=PUBLISHERS)
    await batches.process([received(m, "x") for m in messages])
    return [m.outcome for m in messages]


@pytest.mark.gen_test
@pytest.mark.parametrize("tags", [(7, 1), (3, 3), (1, 2, 2)], ids=["restart at the second", "repeated tag",
                                                                     "repeated at the end"])
async def test_tags_not_strictly_rising_are_acked_one_by_one(tags):
    assert await ack_outcomes(tags) == [[("ack", False)]] * len(tags)


@pytest.mark.gen_test
async def test_two_rising_tags_get_one_multiple_ack():
    assert await ack_outcomes((4, 9)) == [[], [("ack", True)]]
