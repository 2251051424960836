"""Orders (sales): lines with taxes, tenders, refunds.

Money is in the order's ``currency`` major unit. Per line: ``total`` is what the customer pays for
the line after ``discount`` and including tax. Per order: ``subtotal`` = sum of
``quantity × unit_price``; ``discount_total`` = sum of line discounts; ``tax_total`` = all tax
(included or added); ``total`` = sum of line totals; ``amount_paid`` = tenders minus ``change_due``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.model.common import Record
from gateway.model.types import (
    Currency,
    Money,
    NonNegativeMoney,
    PositiveQuantity,
    Quantity,
    Rate,
    ShortText,
    Timestamp,
)

PaymentMethod = Literal["cash", "card", "upi", "bank", "wallet", "credit", "other"]
OrderStatus = Literal["open", "completed", "voided", "refunded", "partially_refunded"]
PaymentStatus = Literal["paid", "partial", "unpaid"]


class LineTax(BaseModel):
    """Tax charged on one line: ``rate`` percent, ``amount`` in money."""

    model_config = ConfigDict(extra="forbid")

    name: str
    rate: Rate
    amount: Money
    compound: bool


class OrderLine(BaseModel):
    """A sold line."""

    model_config = ConfigDict(extra="forbid")

    id: str
    product_id: str | None
    variant_id: str | None
    sku: str | None
    name: str
    quantity: Quantity
    unit_price: Money
    discount: Money
    taxes: list[LineTax]
    total: Money


class Payment(BaseModel):
    """A tender taken for the order."""

    model_config = ConfigDict(extra="forbid")

    method: PaymentMethod
    amount: Money
    reference: str | None


class RefundLine(BaseModel):
    """Quantity of one order line given back, and the money returned for it (tax included)."""

    model_config = ConfigDict(extra="forbid")

    line_id: str
    quantity: Quantity
    amount: Money


class Refund(BaseModel):
    """A (partial) refund; returned goods are restocked when ``restock`` is true."""

    model_config = ConfigDict(extra="forbid")

    id: str
    created_at: Timestamp
    reason: str | None
    restock: bool
    lines: list[RefundLine]
    amount: Money


class Order(Record):
    """A sale at the POS (``source`` ``pos``) or created through the API (``api``)."""

    number: str | None
    status: OrderStatus
    payment_status: PaymentStatus
    customer_id: str | None
    location_id: str | None
    currency: Currency
    lines: list[OrderLine]
    subtotal: Money
    discount_total: Money
    tax_total: Money
    total: Money
    payments: list[Payment]
    amount_paid: Money
    change_due: Money
    refunds: list[Refund]
    refunded_total: Money
    source: Literal["pos", "api"]


class OrderLineCreate(BaseModel):
    """A line of ``POST .../orders``: ``product_id`` or ``sku``; ``unit_price`` omitted means the catalog price.

    ``discount`` is a money amount off the whole line (not per unit).
    """

    model_config = ConfigDict(extra="forbid")

    product_id: str | None = None
    variant_id: str | None = None
    sku: str | None = Field(default=None, min_length=1, max_length=64)
    quantity: PositiveQuantity
    unit_price: NonNegativeMoney | None = None
    discount: NonNegativeMoney = Decimal(0)

    @model_validator(mode="after")
    def _one_reference(self) -> OrderLineCreate:
        if not self.product_id and not self.sku:
            raise ValueError("give product_id or sku")
        return self


class PaymentCreate(BaseModel):
    """A tender of ``POST .../orders``; ``amount`` above what is due in cash becomes ``change_due``."""

    model_config = ConfigDict(extra="forbid")

    method: PaymentMethod
    amount: NonNegativeMoney
    reference: str | None = Field(default=None, max_length=120)


class OrderCreate(BaseModel):
    """``POST .../orders``: the POS computes taxes and totals.

    ``location_id`` defaults to the connection's first location; ``placed_at`` backdates a sale
    recorded after the fact (imports, offline tills).
    """

    model_config = ConfigDict(extra="forbid")

    location_id: str | None = None
    customer_id: str | None = None
    number: ShortText | None = None
    currency: Currency | None = None
    lines: list[OrderLineCreate] = Field(min_length=1, max_length=500)
    payments: list[PaymentCreate] = Field(default_factory=list, max_length=20)
    placed_at: Timestamp | None = None


class RefundLineCreate(BaseModel):
    """A line to refund: ``quantity`` at most what is left unrefunded on that line."""

    model_config = ConfigDict(extra="forbid")

    line_id: str
    quantity: PositiveQuantity


class RefundCreate(BaseModel):
    """``POST .../orders/{id}/refund``: ``lines`` omitted refunds everything not yet refunded."""

    model_config = ConfigDict(extra="forbid")

    lines: list[RefundLineCreate] | None = Field(default=None, min_length=1, max_length=500)
    reason: str | None = Field(default=None, max_length=500)
    restock: bool = True
    refunded_at: Timestamp | None = None


class VoidCreate(BaseModel):
    """``POST .../orders/{id}/void`` (body optional)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)

