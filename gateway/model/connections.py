"""Connectors (installed plugins) and connections (a merchant's account at a POS)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from gateway.model.types import Text, Timestamp


class Connector(BaseModel):
    """An installed connector plugin as ``GET /v1/connectors`` lists it."""

    name: str
    version: str
    title: str
    vendor_docs: str | None
    credentials_schema: dict[str, Any]
    settings_schema: dict[str, Any]
    capabilities: dict[str, Any]


class Connection(BaseModel):
    """A connection; credentials are write-only and never returned."""

    model_config = ConfigDict(extra="forbid")

    id: str
    connector: str
    name: str
    settings: dict[str, Any]
    status: str
    created_at: Timestamp
    updated_at: Timestamp


class ConnectionCreate(BaseModel):
    """``POST /v1/connections``: ``credentials`` and ``settings`` follow the connector's JSON Schemas."""

    model_config = ConfigDict(extra="forbid")

    connector: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: Text
    credentials: dict[str, Any] = Field(default_factory=dict)
    settings: dict[str, Any] = Field(default_factory=dict)


class ConnectionUpdate(BaseModel):
    """``PATCH /v1/connections/{id}``: ``credentials`` replaces them whole; ``settings`` merges."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = None
    credentials: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None


SyncEntity = Literal["products", "categories", "locations", "customers", "orders", "inventory"]


class SyncRequest(BaseModel):
    """``POST /v1/connections/{id}/sync``: which entities (default: all the connector reads) and how.

    ``auto`` is a full sync until one succeeded, then incremental.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["auto", "full", "incremental"] = "auto"
    entities: list[SyncEntity] | None = Field(default=None, min_length=1, max_length=6)
