"""The RFC 9457 problem document every non-2xx answer carries."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Problem(BaseModel):
    """``application/problem+json``: ``code`` is stable snake_case; ``errors`` lists field problems."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None
    errors: list[dict[str, Any]] | None = None
