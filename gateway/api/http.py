"""Request parsing and response helpers shared by every route.

Everything a client can get wrong becomes a :class:`~gateway.errors.TillgateError`: a body that
is not JSON (400 ``malformed_json``), not an object or not valid for the model (422
``validation_error`` with field ``errors``), too large (413), the wrong media type (415), a bad
query parameter (400 ``invalid_parameter``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from gateway import jsonutil
from gateway.errors import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    pydantic_errors,
)

M = TypeVar("M", bound=BaseModel)
MAX_BODY_BYTES = 1 << 20
JSON = "application/json"


class JSONBytes(Response):
    """A response whose body is already-encoded JSON."""

    media_type = JSON


def json_response(data: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Encode ``data`` (dict/list with Decimal, datetime) and answer with it."""
    return JSONBytes(jsonutil.dumps(data), status_code=status_code, headers=headers)


async def read_body(request: Request) -> bytes:
    """The raw body, refused above :data:`MAX_BODY_BYTES`.

    Raises:
        PayloadTooLarge: the body is larger than 1 MiB.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request bodies are limited to {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_model(raw: bytes, model: type[M], content_type: str | None, *, optional: bool = False) -> M:
    """Validate a JSON body against ``model``.

    Args:
        optional: an empty body means ``model()`` (all defaults).

    Raises:
        UnsupportedMediaType, BadRequest (``malformed_json``), ValidationFailed.
    """
    if not raw.strip():
        if optional:
            return model()
        raise ValidationFailed(
            "a JSON object body is required", errors=[{"loc": ["body"], "msg": "field required", "type": "missing"}]
        )
    if content_type is not None:
        media = content_type.split(";", 1)[0].strip().lower()
        if media and media != JSON and not media.endswith("+json"):
            raise UnsupportedMediaType(f"send the body as {JSON}, not {media}")
    try:
        data = jsonutil.loads(raw)
    except jsonutil.MalformedJSON as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="malformed_json") from None
    if not isinstance(data, dict):
        raise ValidationFailed(
            "the body must be a JSON object",
            errors=[{"loc": ["body"], "msg": "must be a JSON object", "type": "type_error"}],
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed("the body is not valid", errors=pydantic_errors(exc)) from None


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high].

    Raises:
        BadRequest: ``invalid_parameter``.
    """
    value = request.query_params.get(name)
    if value is None or value == "":
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise BadRequest(f"{name} must be an integer from {low} to {high}", code="invalid_parameter",
                         errors=[{"loc": ["query", name], "msg": f"must be an integer from {low} to {high}", "type": "range"}])
    return int(value)


def query_bool(request: Request, name: str) -> bool:
    """A ``true``/``false`` query parameter (absent: false)."""
    value = request.query_params.get(name)
    if value is None or value == "" or value == "false":
        return False
    if value == "true":
        return True
    raise BadRequest(f"{name} must be true or false", code="invalid_parameter",
                     errors=[{"loc": ["query", name], "msg": "must be true or false", "type": "bool"}])


def query_time(request: Request, name: str) -> datetime | None:
    """An RFC 3339 query parameter as aware UTC (a time without offset is taken as UTC)."""
    value = request.query_params.get(name)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise BadRequest(f"{name} must be an RFC 3339 timestamp such as 2026-03-31T10:30:00Z",
                         code="invalid_parameter",
                         errors=[{"loc": ["query", name], "msg": "not an RFC 3339 timestamp", "type": "datetime"}]) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def query_text(request: Request, name: str, max_length: int = 200) -> str | None:
    """A free-text query parameter, bounded in length."""
    value = request.query_params.get(name)
    if value is not None and len(value) > max_length:
        raise BadRequest(f"{name} is longer than {max_length} characters", code="invalid_parameter",
                         errors=[{"loc": ["query", name], "msg": "too long", "type": "length"}])
    return value
