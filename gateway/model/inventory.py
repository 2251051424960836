"""Inventory: stock levels per (product or variant, location), adjustments and counts.

Quantities are decimal strings in the product's unit, at most 3 decimals (thousandths).
``available`` = ``on_hand`` − the connection's ``safety_stock`` setting (never below zero).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

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
    """A stock delta pushed to the POS: ``pending`` until the POS applied it (or it ``failed``).

    ``link_id``: set on the adjustments an inventory link made (reason ``link``; ``reference``
    names the change it mirrors: ``<source connection id>:<source inventory level id>``).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    connection_id: str
    product_id: str
    variant_id: str | None
    location_id: str
    delta: Quantity
    reason: AdjustmentReason | Literal["link"]
    reference: str | None
    link_id: str | None
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


class InventoryLinkMember(BaseModel):
    """One stock location of an inventory link: a location of one connection."""

    model_config = ConfigDict(extra="forbid")

    connection_id: Annotated[str, StringConstraints(min_length=1, max_length=40)]
    location_id: Annotated[str, StringConstraints(min_length=1, max_length=40)]


class InventoryLinkCreate(BaseModel):
    """``POST /v1/inventory-links``: keep the stock of two or more locations in one pool.

    ``match_by``: how a product at one member is found at the others, by its (or its variant's)
    ``sku`` or ``barcode``. A location can be in one link only.
    """

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    match_by: Literal["sku", "barcode"] = "sku"
    members: list[InventoryLinkMember] = Field(min_length=2, max_length=20)


class InventoryLinkUpdate(BaseModel):
    """``PATCH /v1/inventory-links/{id}``: ``name``; ``status`` ``disabled`` stops propagating
    changes (nothing is caught up when it is enabled again)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    status: Literal["enabled", "disabled"] | None = None


class InventoryLink(BaseModel):
    """Linked stock locations: a change of ``on_hand`` at one member that did not come from the
    link is pushed to every other member as an adjustment (``link_id`` set) of the same delta.

    ``unmatched_count``: propagations skipped because no single product at a member carries the
    identifier; ``last_unmatched`` says which (and when: ``last_unmatched_at``).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    object: Literal["inventory_link"]
    name: str | None
    match_by: Literal["sku", "barcode"]
    status: Literal["enabled", "disabled"]
    members: list[InventoryLinkMember]
    unmatched_count: int
    last_unmatched: str | None
    last_unmatched_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp
