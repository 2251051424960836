"""Opaque, prefixed identifiers (``prod_``, ``ord_``, ...).

Ids are 26 characters of Crockford base32 (lower case) after the prefix: a 48-bit millisecond
timestamp followed by 80 random bits, so they sort by creation time to the millisecond and do
not collide across processes.
"""

from __future__ import annotations

import itertools
import os
import time

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
    "inventory_link": "ilk",
    "journal_entry": "wjn",
    "movement": "mov",
    "event": "evt",
    "webhook_endpoint": "whe",
    "delivery": "dlv",
    "delivery_attempt": "att",
    "inbound_delivery": "inb",
    "request": "req",
    "job": "job",
    "sync_run": "run",
}


_DIGITS = "0123456789abcdefghjkmnpqrstvwxyz"
# Two base32 digits per 10-bit chunk: 13 table lookups encode the 130 bits (128 + 2 zero bits)
# that base64.b32encode would, in a fraction of its time (a sync creates two ids per record).
_PAIRS = [a + b for a in _DIGITS for b in _DIGITS]


def new_id(kind: str) -> str:
    """Return a new id for ``kind`` (a key of :data:`PREFIXES`), e.g. ``prod_01j9...``.

    The 26 digits are the Crockford base32 of the 16 bytes (48-bit big-endian milliseconds, then
    80 random bits), padded with two zero bits: the first 26 digits of RFC 4648 base32 of those
    bytes, translated to Crockford's alphabet.

    Raises:
        KeyError: ``kind`` is not a known object kind.
    """
    prefix = PREFIXES[kind]
    value = (((int(time.time() * 1000) & 0xFFFFFFFFFFFF) << 80) | int.from_bytes(os.urandom(10), "big")) << 2
    pairs = _PAIRS
    return prefix + "_" + "".join([pairs[(value >> shift) & 0x3FF] for shift in range(120, -1, -10)])


def has_prefix(value: str, kind: str) -> bool:
    """True when ``value`` looks like an id of ``kind`` (prefix and length only)."""
    prefix = PREFIXES[kind] + "_"
    return value.startswith(prefix) and len(value) == len(prefix) + 26


_REQUEST_PREFIX = "".join(_DIGITS[b & 31] for b in os.urandom(13))
_request_counter = itertools.count()


def new_request_id() -> str:
    """A request id ``req_...``: a random per-process prefix and a counter (cheaper than :func:`new_id`
    on every request, still unique across processes)."""
    return f"req_{_REQUEST_PREFIX}{next(_request_counter):013x}"
