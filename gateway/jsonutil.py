"""JSON encoding and decoding with exact decimals.

Decoding never produces a ``float``: JSON numbers with a fraction or exponent become
:class:`decimal.Decimal`. Encoding writes ``Decimal`` as a string, ``datetime`` as RFC 3339 UTC.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson


class MalformedJSON(ValueError):
    """The bytes are not a JSON document (or not UTF-8)."""


class JsonNumber(Decimal):
    """A JSON number with a fraction or exponent, parsed exactly.

    A subclass so validators can tell a number the client sent (``2.5``) from a decimal string
    (``"2.5"``): money fields accept only the latter.
    """


def loads(data: bytes | str) -> Any:
    """Parse JSON, turning non-integer numbers into ``Decimal``.

    Raises:
        MalformedJSON: the input is not valid JSON.
    """
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        return json.loads(data, parse_float=JsonNumber, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MalformedJSON(str(exc)) from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """Encode ``value`` as compact JSON bytes (Decimal as string, datetimes as RFC 3339 ``Z``)."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC)


def dumps_sorted(value: Any) -> bytes:
    """Like :func:`dumps` with sorted keys: a canonical form for content hashes."""
    return orjson.dumps(
        value, default=_default, option=orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | orjson.OPT_SORT_KEYS
    )


def utcnow() -> datetime:
    """Current time as an aware UTC datetime (every timestamp column stores aware UTC)."""
    return datetime.now(UTC)


def rfc3339(value: datetime | None) -> str | None:
    """Format an aware (or naive, taken as UTC) datetime as RFC 3339 UTC with a ``Z`` suffix."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    text = value.isoformat()
    return text + "Z"
