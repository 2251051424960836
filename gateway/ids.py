"""Opaque, prefixed identifiers (``prod_``, ``ord_``, ...).

Ids are 26 characters of Crockford base32 after the prefix: a 48-bit millisecond timestamp
followed by 80 random bits (the ULID layout), so they sort roughly by creation time and never
collide across processes.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

PREFIXES = {
    "tenant": "ten",
    "api_key": "key",
    "connection": "con",
    "product": "prod",
    "variant": "var",
    "category": "cat",
    "location": "loc",
    "customer": "cus",
    "order": "ord",
    "order_line": "line",
    "refund": "ref",
    "inventory": "inv",
    "adjustment": "adj",
    "movement": "mov",
    "event": "evt",
    "webhook_endpoint": "whe",
    "delivery": "dlv",
    "request": "req",
}


def new_id(kind: str) -> str:
    """Return a new id for ``kind`` (a key of :data:`PREFIXES`), e.g. ``prod_01j9...``.

    Raises:
        KeyError: ``kind`` is not a known object kind.
    """
    prefix = PREFIXES[kind]
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return f"{prefix}_{''.join(reversed(chars))}"


def has_prefix(value: str, kind: str) -> bool:
    """True when ``value`` looks like an id of ``kind`` (prefix and length only)."""
    prefix = PREFIXES[kind] + "_"
    return value.startswith(prefix) and len(value) == len(prefix) + 26
