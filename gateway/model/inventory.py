"""Inventory: stock levels per (product or variant, location), adjustments and counts.

Quantities are decimal strings in the product's unit, at most 3 decimals (thousandths).
``available`` = ``on_hand`` − the connection's ``safety_stock`` setting (never below zero).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.model.common import Record
from gateway.model.types import NonNegativeQuantity, Quantity, Timestamp

AdjustmentReason = Literal["sale", "return", "restock", "correction", "transfer", "count"]


class InventoryLevel(Record):
    """Stock of one product (or variant) at one location."""

    product_id: str
    variant_id: str | None
    location_id: str
    on_hand: Quantity
    available: Quantity
    low_stock_threshold: Quantity | None


class Adjustment(BaseModel):
    """A stock delta pushed to the POS: ``pending`` until the POS applied it (or it ``failed``)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    connection_id: str
    product_id: str
    variant_id: str | None
    location_id: str
    delta: Quantity
    reason: AdjustmentReason
    reference: str | None
    status: Literal["pending", "applied", "failed"]
    attempts: int
    last_error: str | None
    applied_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp


class AdjustmentCreate(BaseModel):
    """``POST .../inventory/adjustments`` (requires an ``Idempotency-Key`` header).

    Give ``product_id`` or ``sku``. ``delta`` is signed: ``"-1"`` takes one unit out.
    """

    model_config = ConfigDict(extra="forbid")

    product_id: str | None = None
    sku: str | None = Field(default=None, min_length=1, max_length=64)
    variant_id: str | None = None
    location_id: str
    delta: Quantity
    reason: AdjustmentReason
    reference: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _check(self) -> AdjustmentCreate:
        if not self.product_id and not self.sku:
            raise ValueError("give product_id or sku")
        if self.delta == 0:
            raise ValueError("delta must not be zero")
        return self


class CountSet(BaseModel):
    """``PUT .../inventory/{product_id}/{location_id}``: set ``on_hand`` if it still equals ``expected_on_hand``."""

    model_config = ConfigDict(extra="forbid")

    on_hand: NonNegativeQuantity
    expected_on_hand: Quantity | None = None
    variant_id: str | None = None
    reason: Literal["count", "correction"] = "count"
