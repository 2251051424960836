"""Pieces shared by every unified object."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from gateway.model.types import Timestamp

T = TypeVar("T")


class Record(BaseModel):
    """Fields every synced object has.

    ``remote_id`` is the vendor's id as a string; ``deleted_at`` is set on soft-deleted records,
    which lists show only with ``?include_deleted=true``.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    connection_id: str
    remote_id: str
    created_at: Timestamp
    updated_at: Timestamp
    deleted_at: Timestamp | None = None
    raw: dict[str, Any] | None = Field(default=None, description="the vendor's payload; only with ?expand=raw")


class Address(BaseModel):
    """A postal address; every part optional, ``country`` is free text or ISO 3166 alpha-2."""

    model_config = ConfigDict(extra="forbid")

    line1: str | None = Field(default=None, max_length=200)
    line2: str | None = Field(default=None, max_length=200)
    city: str | None = Field(default=None, max_length=100)
    region: str | None = Field(default=None, max_length=100)
    postal_code: str | None = Field(default=None, max_length=20)
    country: str | None = Field(default=None, max_length=60)


class ListPage(BaseModel, Generic[T]):
    """A page of a list: ``next_cursor`` is ``null`` on the last page."""

    data: list[T]
    next_cursor: str | None
