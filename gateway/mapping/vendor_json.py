"""Encode vendor write bodies: decimals marked as numbers are written as bare JSON numbers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from gateway.jsonutil import JsonNumber


def _encode(value: Any) -> str:
    if isinstance(value, JsonNumber):
        return format(value, "f")
    if isinstance(value, Decimal):
        return json.dumps(format(value, "f"))
    if isinstance(value, datetime):
        moment = value.astimezone(UTC) if value.tzinfo else value
        return json.dumps(moment.replace(tzinfo=None).isoformat() + "Z")
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{_encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_encode(v) for v in value) + "]"
    if value is None or isinstance(value, (bool, int, str)):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot encode {type(value).__name__} in a vendor body (floats are refused)")


def dumps_vendor_body(body: Any) -> bytes:
    """Encode a mapped write body as UTF-8 JSON for the vendor.

    :class:`~gateway.jsonutil.JsonNumber` (what ``decimal_to_number`` returns) becomes a bare
    number with exactly its digits (``4.50``); any other ``Decimal`` a string (``"4.50"``);
    ``datetime`` RFC 3339 UTC. Floats are refused so none slips in. Pass the result as
    ``content=`` with ``Content-Type: application/json`` (``httpx``'s ``json=`` cannot encode
    decimals).

    Raises:
        TypeError: a value that has no JSON form (float, set, object).
    """
    return _encode(body).encode("utf-8")
