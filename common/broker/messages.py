"""The two message types that cross the broker, and their strict reading.

`outbox_os` carries `PaymentRequest`s (Order Service → Payments Service);
`outbox_ps` carries `PaymentResult`s (Payments Service → Order Service).
A message holds one entry or several (`common.broker.packing`); each type says here what one entry is (`entry`) and
reads one back (`from_entry`, which raises `InvalidMessage`). Amounts travel as strings so they stay exact.

`trace` is not one of an entry's `FIELDS`: the trace context travels beside them (`common.broker.packing`), and with
tracing on the consumer sets `trace` to the context of the entry's processing span (`common.observability.tracing`), for
what the handling writes to continue that trace."""
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any, ClassVar, Self

from common.domain.errors import InvalidInput, InvalidMessage
from common.domain.validation import parse_amount, parse_id

ORDER_REQUESTS = "outbox_os"
PAYMENT_RESULTS = "outbox_ps"


class OrderStatus(StrEnum):
    """An order's status, in both services' tables and in a `PaymentResult` (schema.sql checks the same)."""
    NEW = "NEW"
    FINISHED = "FINISHED"
    CANCELLED = "CANCELLED"


FINAL_STATUSES = (OrderStatus.FINISHED, OrderStatus.CANCELLED)


class Traced:
    """A message type with a `trace` field."""

    def traced(self, trace: str | None) -> Self:
        """This message, as handled in the trace `trace`."""
        return dataclasses.replace(self, trace=trace)  # type: ignore[type-var]  # each subclass is a dataclass

    def entry(self) -> dict[str, Any]:
        raise NotImplementedError

    def encode(self) -> bytes:
        """The body of a message of this entry alone (the format from before packing)."""
        return json.dumps(self.entry()).encode()


@dataclass(frozen=True)
class PaymentRequest(Traced):
    FIELDS: ClassVar[tuple[str, ...]] = ("order_id", "user_id", "amount")
    order_id: int
    user_id: int
    amount: Decimal
    trace: str | None = dataclasses.field(default=None, compare=False)

    @staticmethod
    def entry_of(row: Mapping[str, Any]) -> dict[str, Any]:
        """The entry of the request of an order or outbox row (`order_id`, `user_id`, `amount`)."""
        return {"order_id": row["order_id"], "user_id": row["user_id"], "amount": str(row["amount"])}

    def entry(self) -> dict[str, Any]:
        return self.entry_of(vars(self))

    @classmethod
    def from_entry(cls, data: Mapping[str, Any]) -> "PaymentRequest":
        try:
            return cls(parse_id(data["order_id"], "order_id"), parse_id(data["user_id"], "user_id"),
                       parse_amount(data["amount"]))
        except InvalidInput as exc:
            raise InvalidMessage(exc.message) from None


@dataclass(frozen=True)
class PaymentResult(Traced):
    FIELDS: ClassVar[tuple[str, ...]] = ("order_id", "status")
    order_id: int
    status: OrderStatus
    trace: str | None = dataclasses.field(default=None, compare=False)

    def entry(self) -> dict[str, Any]:
        return {"order_id": self.order_id, "status": self.status}

    @classmethod
    def from_entry(cls, data: Mapping[str, Any]) -> "PaymentResult":
        if data["status"] not in FINAL_STATUSES:
            raise InvalidMessage(f"'status' must be one of {tuple(map(str, FINAL_STATUSES))}")
        try:
            return cls(parse_id(data["order_id"], "order_id"), OrderStatus(data["status"]))
        except InvalidInput as exc:
            raise InvalidMessage(exc.message) from None
