"""Outbound webhooks: endpoints, deliveries and their attempts (``/v1/webhook-endpoints``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from gateway.model.events import EVENT_TYPES
from gateway.model.types import Timestamp

_NOUNS = frozenset(name.split(".")[0] for name in EVENT_TYPES)

#: The largest ``seq`` (a signed 64-bit column).
MAX_SEQ = 2**63 - 1

EventPattern = Annotated[str, StringConstraints(min_length=1, max_length=60)]


def check_patterns(patterns: list[str]) -> list[str]:
    """Validate subscription patterns: ``*``, ``<noun>.*`` of a known noun, or a known event type.

    Returns the patterns without duplicates, in their order.

    Raises:
        ValueError: an unknown type or noun (the message lists what is known).
    """
    seen: list[str] = []
    for pattern in patterns:
        known = pattern == "*" or pattern in EVENT_TYPES or (pattern.endswith(".*") and pattern[:-2] in _NOUNS)
        if not known:
            raise ValueError(f"unknown event type or pattern {pattern!r}: use '*', '<noun>.*' "
                             f"({', '.join(sorted(_NOUNS))}) or one of the event types")
        if pattern not in seen:
            seen.append(pattern)
    return seen


class WebhookEndpointCreate(BaseModel):
    """``POST /v1/webhook-endpoints``.

    ``events``: event types or patterns (``*``, ``order.*``); ``connection_ids``: only events of
    these connections (omitted or ``null``: every connection, and tenant-level events).
    """

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    events: list[EventPattern] = Field(min_length=1, max_length=50)
    connection_ids: list[Annotated[str, StringConstraints(min_length=1, max_length=40)]] | None = Field(
        default=None, min_length=1, max_length=100)
    description: Annotated[str, StringConstraints(max_length=500)] | None = None

    @field_validator("events")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        return check_patterns(value)


class WebhookEndpointUpdate(BaseModel):
    """``PATCH /v1/webhook-endpoints/{id}``: only the members sent change; ``connection_ids: null``
    widens the endpoint to every connection; ``status`` enables or disables it."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, StringConstraints(min_length=1, max_length=2000)] | None = None
    events: list[EventPattern] | None = Field(default=None, min_length=1, max_length=50)
    connection_ids: list[Annotated[str, StringConstraints(min_length=1, max_length=40)]] | None = Field(
        default=None, min_length=1, max_length=100)
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    status: Literal["enabled", "disabled"] | None = None

    @field_validator("events")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_patterns(value)


class ReplayRequest(BaseModel):
    """``POST /v1/webhook-endpoints/{id}/replay``: deliver again every matching event with
    ``from_seq <= seq <= to_seq`` (``to_seq`` omitted: up to the newest; at most 10,000 events
    per request, the answer's ``next_seq`` continues)."""

    model_config = ConfigDict(extra="forbid")

    from_seq: int = Field(ge=1, le=MAX_SEQ)
    to_seq: int | None = Field(default=None, ge=1, le=MAX_SEQ)


class WebhookEndpoint(BaseModel):
    """An endpoint as the API shows it; ``secret`` appears only in the answer that created it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    url: str
    description: str | None
    events: list[str]
    connection_ids: list[str] | None
    status: Literal["enabled", "disabled"]
    disabled_reason: Literal["manual", "gone"] | None
    created_at: Timestamp
    updated_at: Timestamp
    secret: str | None = None
    deleted: bool | None = None  # true in the answer to DELETE


class DeliveryAttempt(BaseModel):
    """One HTTP attempt: ``status_code`` ``null`` when there was no answer (``error`` says why)."""

    model_config = ConfigDict(extra="forbid")

    attempt: int
    attempted_at: Timestamp
    status_code: int | None
    error: str | None
    duration_ms: int
    response_body: str | None


class WebhookDelivery(BaseModel):
    """One event to one endpoint: ``pending`` (``next_attempt_at``), ``delivered``, ``failed``
    (the retry schedule ran out) or ``cancelled`` (the endpoint was deleted)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    endpoint_id: str
    event_id: str
    seq: int
    event_type: str
    status: Literal["pending", "delivered", "failed", "cancelled"]
    attempts: int
    next_attempt_at: Timestamp | None
    last_attempt_at: Timestamp | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: Timestamp | None
    created_at: Timestamp
    attempt_log: list[DeliveryAttempt] | None = None
