"""Opaque, prefixed identifiers (``prod_``, ``ord_``, ...).

Ids are 26 characters of Crockford base32 (lower case) after the prefix: a 48-bit millisecond
timestamp followed by 80 random bits, so they sort by creation time to the millisecond and do
not collide across processes.
"""

from __future__ import annotations

import base64
import itertools
import os
import time

# RFC 4648 base32 digits mapped onto Crockford's alphabet (lower case), which keeps byte order.
_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghjkmnpqrstvwxyz")

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
    "job": "job",
    "sync_run": "run",
}


def new_id(kind: str) -> str:
    """Return a new id for ``kind`` (a key of :data:`PREFIXES`), e.g. ``prod_01j9...``.

    Raises:
        KeyError: ``kind`` is not a known object kind.
    """
    prefix = PREFIXES[kind]
    raw = (int(time.time() * 1000) & 0xFFFFFFFFFFFF).to_bytes(6, "big") + os.urandom(10)
    return f"{prefix}_{base64.b32encode(raw)[:26].translate(_CROCKFORD).decode()}"


def has_prefix(value: str, kind: str) -> bool:
    """True when ``value`` looks like an id of ``kind`` (prefix and length only)."""
    prefix = PREFIXES[kind] + "_"
    return value.startswith(prefix) and len(value) == len(prefix) + 26


_REQUEST_PREFIX = base64.b32encode(os.urandom(10)).decode().translate(str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "0123456789abcdefghjkmnpqrstvwxyz"))[:13]
_request_counter = itertools.count()


def new_request_id() -> str:
    """A request id ``req_...``: a random per-process prefix and a counter (cheaper than :func:`new_id`
    on every request, still unique across processes)."""
    return f"req_{_REQUEST_PREFIX}{next(_request_counter):013x}"
