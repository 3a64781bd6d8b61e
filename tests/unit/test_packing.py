"""Several rows in one message (`common.broker.packing`): what a message of several entries looks like, and how any
message is read back entry by entry, a malformed entry refused on its own."""
import json
from decimal import Decimal

import pytest

from common.broker.messages import PaymentRequest, PaymentResult
from common.broker.packing import pack, unpack
from common.domain.errors import InvalidMessage

TRACE_A = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_B = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
HEADER_TRACE = "00-11111111111111111111111111111111-2222222222222222-01"


def read_one(kind, body):
    """The item of a message of one entry (today's format), or raise the `InvalidMessage` it was refused with."""
    entries = unpack(body, None, kind)
    assert len(entries) == 1
    if isinstance(entries[0].item, InvalidMessage):
        raise entries[0].item
    return entries[0].item


def reasons(entries):
    return [str(entry.item) if isinstance(entry.item, InvalidMessage) else None for entry in entries]


def test_a_message_of_several_entries_is_a_json_array_each_entry_with_its_own_trace():
    requests = [PaymentRequest(1, 2, Decimal("3.00")), PaymentRequest(4, 5, Decimal("6.50"))]
    body = pack([r.entry() for r in requests], [TRACE_A, None])
    assert json.loads(body) == [{"order_id": 1, "user_id": 2, "amount": "3.00", "traceparent": TRACE_A},
                                {"order_id": 4, "user_id": 5, "amount": "6.50"}]
    entries = unpack(body, HEADER_TRACE, PaymentRequest)
    assert [entry.item for entry in entries] == requests
    # An entry's own trace, else its message's header (a message of several has none: each order is its own trace).
    assert [entry.trace for entry in entries] == [TRACE_A, HEADER_TRACE]


def test_a_message_of_one_object_is_read_as_before_packing_with_the_trace_of_its_header():
    [entry] = unpack(PaymentResult(7, "FINISHED").encode(), HEADER_TRACE, PaymentResult)
    assert (entry.item, entry.trace) == (PaymentResult(7, "FINISHED"), HEADER_TRACE)
    assert read_one(PaymentRequest, b'{"order_id": 1, "user_id": 2, "amount": "1.5", "traceparent": "t"}') == \
        PaymentRequest(1, 2, Decimal("1.50"))


def test_a_malformed_entry_is_refused_alone_with_its_text_as_sent_and_the_others_are_read():
    body = (b' [ {"order_id": 1, "user_id": 2, "amount": "3"},\n {"order_id": 0, "user_id": 2, "amount": 1.10},'
            b'{"order_id": 2, "user_id": 2, "amount": "1"} ] ')
    entries = unpack(body, None, PaymentRequest)
    assert reasons(entries) == [None, "entry 1: 'order_id' must be a positive integer up to 9223372036854775807.",
                                None]
    assert [entry.item.order_id for entry in (entries[0], entries[2])] == [1, 2]
    assert entries[1].text == '{"order_id": 0, "user_id": 2, "amount": 1.10}'  # 1.10 exactly, not re-encoded


@pytest.mark.parametrize("entry, reason", [
    ('5', "entry 1 must be an object with exactly the fields ['order_id', 'status']"),
    ('[{"order_id": 1, "status": "FINISHED"}]', "entry 1 must be an object with exactly the fields "
                                                "['order_id', 'status']"),
    ('{"order_id": 1}', "entry 1 must be an object with exactly the fields ['order_id', 'status']"),
    ('{"order_id": 1, "status": "FINISHED", "extra": 1}', "entry 1 must be an object with exactly the fields "
                                                          "['order_id', 'status']"),
    ('{"order_id": "x", "status": "FINISHED"}', "entry 1: 'order_id' must be a positive integer."),
    ('{"order_id": 1, "status": ["FINISHED"]}', "entry 1: 'status' must be one of ('FINISHED', 'CANCELLED')"),
    ('{"order_id": 1, "status": "FINISHED", "traceparent": 7}',
     "entry 1: 'traceparent' must be a string of at most 512 characters"),
])
def test_an_entry_of_the_wrong_shape_or_type_is_refused_with_a_reason_naming_it(entry, reason):
    body = f'[{{"order_id": 9, "status": "CANCELLED"}}, {entry}]'.encode()
    entries = unpack(body, None, PaymentResult)
    assert reasons(entries) == [None, reason]
    assert entries[1].text == entry


@pytest.mark.parametrize("body, reason", [
    (b"{not json", "body is not valid JSON"), (b"\xff", "body is not valid JSON"),
    (b'[{"order_id": 1, "status": "FINISHED"}', "body is not valid JSON"),
    (b'[{"order_id": 1, "status": "FINISHED"} {}]', "body is not valid JSON"),
    (b'[{"order_id": 1, "status": "FINISHED"}] x', "body is not valid JSON"),
    (b'[{"order_id": 1, "status": "FINISHED"},]', "body is not valid JSON"),
    (b"[]", "body must be an object or a non-empty array of objects"), (b" [ ] ", "body must be an object or a "
                                                                        "non-empty array of objects"),
])
def test_a_body_that_is_not_json_or_an_empty_array_refuses_the_whole_message(body, reason):
    with pytest.raises(InvalidMessage) as refused:
        unpack(body, None, PaymentResult)
    assert str(refused.value) == reason


def test_a_body_of_one_value_that_is_no_entry_is_one_refused_entry_with_the_reason_of_before():
    with pytest.raises(InvalidMessage) as refused:
        read_one(PaymentResult, b"5")
    assert str(refused.value) == "body must be an object with exactly the fields ['order_id', 'status']"
