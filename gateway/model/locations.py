"""Locations: stores and warehouses that hold stock and take sales."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.model.common import Address, Record
from gateway.model.types import Text


class Location(Record):
    """A store or warehouse. ``timezone`` is an IANA name (``Europe/London``)."""

    name: str
    kind: Literal["store", "warehouse"]
    address: Address | None
    timezone: str | None


class LocationCreate(BaseModel):
    """``POST .../locations`` (local connections)."""

    model_config = ConfigDict(extra="forbid")

    name: Text
    kind: Literal["store", "warehouse"] = "store"
    address: Address | None = None
    timezone: str | None = Field(default=None, pattern=r"^[A-Za-z_]+(/[A-Za-z0-9_+\-]+){0,2}$", max_length=64)
