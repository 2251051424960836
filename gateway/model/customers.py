"""Customers with an account balance, credit limit and loyalty points."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gateway.model.common import Address, Record
from gateway.model.types import Currency, Money, NonNegativeMoney, Text

EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]{1,190}\.[^@\s]{1,63}$"
PHONE_PATTERN = r"^\+?[0-9 ()\-.]{3,30}$"


class Customer(Record):
    """A customer.

    ``balance`` is what the customer owes on account (positive) in ``currency``'s major unit;
    sales paid with the ``credit`` tender raise it, up to ``credit_limit`` (``null``: no account).
    """

    name: str
    email: str | None
    phone: str | None
    address: Address | None
    credit_limit: Money | None
    balance: Money
    loyalty_points: int
    currency: Currency


class CustomerCreate(BaseModel):
    """``POST .../customers``."""

    model_config = ConfigDict(extra="forbid")

    name: Text
    email: str | None = Field(default=None, pattern=EMAIL_PATTERN, max_length=254)
    phone: str | None = Field(default=None, pattern=PHONE_PATTERN)
    address: Address | None = None
    credit_limit: NonNegativeMoney | None = None
    currency: Currency | None = None


class CustomerUpdate(BaseModel):
    """``PATCH .../customers/{id}``: only the fields given change."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = None
    email: str | None = Field(default=None, pattern=EMAIL_PATTERN, max_length=254)
    phone: str | None = Field(default=None, pattern=PHONE_PATTERN)
    address: Address | None = None
    credit_limit: NonNegativeMoney | None = None
