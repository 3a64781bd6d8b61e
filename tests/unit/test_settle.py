from decimal import Decimal

from payment_svc.service import Debit, settle


def row(order_id, user_id, amount, status="NEW"):
    return dict(order_id=order_id, user_id=user_id, amount=Decimal(amount), status=status)


def test_earlier_order_is_paid_first_and_later_one_cancelled():
    settlement = settle([row(1, 1, "1000"), row(2, 1, "1000")], {1: Decimal("1000")})
    assert settlement.statuses == {1: "FINISHED", 2: "CANCELLED"}
    assert balances_left(settlement) == {1: Decimal("0")}
    assert settlement.debits == [Debit(1, 1, Decimal("1000"), Decimal("0"))]


def test_each_debit_records_the_balance_it_leaves():
    settlement = settle([row(1, 1, "30"), row(2, 2, "5"), row(3, 1, "50"), row(4, 1, "25")],
                        {1: Decimal("100"), 2: Decimal("5")})
    assert settlement.debits == [Debit(1, 1, Decimal("30"), Decimal("70")), Debit(2, 2, Decimal("5"), Decimal("0")),
                                 Debit(1, 3, Decimal("50"), Decimal("20"))]
    assert settlement.statuses[4] == "CANCELLED"
    assert balances_left(settlement) == {1: Decimal("20"), 2: Decimal("0")}


def test_order_of_user_without_account_is_cancelled():
    settlement = settle([row(3, 9, "1")], {})
    assert settlement.statuses == {3: "CANCELLED"} and settlement.debits == []


def test_already_settled_request_keeps_its_status_and_debits_nothing():
    settlement = settle([row(4, 1, "5", status="FINISHED"), row(5, 1, "5", status="CANCELLED")], {1: Decimal("100")})
    assert settlement.statuses == {4: "FINISHED", 5: "CANCELLED"}
    assert settlement.debits == []


def balances_left(settlement):
    """{user_id: balance} after the settlement's debits: what each user's last debit left."""
    return {debit.user_id: debit.balance for debit in settlement.debits}
