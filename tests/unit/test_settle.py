from decimal import Decimal

from payment_svc.service import settle


def row(order_id, user_id, amount, status="NEW"):
    return dict(order_id=order_id, user_id=user_id, amount=Decimal(amount), status=status)


def test_earlier_order_is_paid_first_and_later_one_cancelled():
    statuses, balances = settle([row(1, 1, "1000"), row(2, 1, "1000")], {1: Decimal("1000")})
    assert statuses == {1: "FINISHED", 2: "CANCELLED"}
    assert balances == {1: Decimal("0")}


def test_order_of_user_without_account_is_cancelled():
    statuses, balances = settle([row(3, 9, "1")], {})
    assert statuses == {3: "CANCELLED"} and balances == {}


def test_already_settled_request_keeps_its_status_and_debits_nothing():
    statuses, balances = settle([row(4, 1, "5", status="FINISHED"), row(5, 1, "5", status="CANCELLED")],
                                {1: Decimal("100")})
    assert statuses == {4: "FINISHED", 5: "CANCELLED"} and balances == {}
