"""Change-log events."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from gateway.model.types import Timestamp

EVENT_TYPES = (
    "product.created", "product.updated", "product.deleted",
    "category.created", "category.updated", "category.deleted",
    "location.created", "location.updated", "location.deleted",
    "customer.created", "customer.updated", "customer.deleted",
    "order.created", "order.updated", "order.refunded", "order.voided",
    "inventory.updated", "inventory.low", "inventory.drift",
    "adjustment.applied", "adjustment.failed",
    "connection.sync_completed", "connection.sync_failed", "connection.unhealthy", "connection.recovered",
)


class Event(BaseModel):
    """One change: ``seq`` is per tenant, gap-free and in commit order; ``data`` is the object after it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    seq: int
    type: str
    connection_id: str | None
    occurred_at: Timestamp
    data: dict[str, Any]
    changed: list[str]


class EventPage(BaseModel):
    """``GET /v1/events``: ``next_after`` is the ``after`` to ask for next (the last ``seq`` seen)."""

    data: list[Event]
    next_after: int
