"""Paths into a record: ``items.0.price``, ``items[0].price``, ``$root.id``, ``$index``.

A path is a dotted list of keys; a segment of digits (or ``[n]``) indexes a list. ``$root``
starts at the top-level record being mapped (inside an ``each``), ``$index`` is the position of
the current element of the innermost ``each`` list.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.mapping.errors import TransformError

Path = tuple[str | int, ...]


class _Missing:
    """The path leads nowhere (distinct from a JSON ``null``)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
ROOT = "$root"
INDEX = "$index"

_SEGMENT = re.compile(r"[^.\[\]]+|\[[0-9]+\]")
_cache: dict[str, Path] = {}


def compile_path(text: str) -> Path:
    """Split ``"items[0].price"`` into ``("items", 0, "price")``.

    Raises:
        TransformError: an empty or malformed path, or ``$root``/``$index`` not at its start.
    """
    cached = _cache.get(text)
    if cached is not None:
        return cached
    if not isinstance(text, str) or not text or text.startswith(".") or text.endswith(".") or ".." in text:
        raise TransformError(f"bad path {text!r}")
    tokens: list[str | int] = []
    pos = 0
    for match in _SEGMENT.finditer(text):
        between = text[pos:match.start()]
        if between not in ("", "."):
            raise TransformError(f"bad path {text!r}")
        seg = match.group()
        if seg.startswith("["):
            tokens.append(int(seg[1:-1]))
        elif seg.isdigit():
            tokens.append(int(seg))
        else:
            tokens.append(seg)
        pos = match.end()
    if pos != len(text) or not tokens:
        raise TransformError(f"bad path {text!r}")
    for i, token in enumerate(tokens):
        if token in (ROOT, INDEX) and i != 0:
            raise TransformError(f"bad path {text!r}: {token} must come first")
    if tokens[0] == INDEX and len(tokens) > 1:
        raise TransformError(f"bad path {text!r}: $index has no fields")
    path = tuple(tokens)
    _cache[text] = path
    return path


def resolve_path(value: Any, path: Path, scope: Any = None) -> Any:
    """Follow ``path`` from ``value``; ``MISSING`` when a key, index or container is absent.

    ``scope`` (the engine's current frame, with ``root`` and ``index``) answers ``$root``
    and ``$index``; without it they are ``MISSING``.
    """
    tokens: Path = path
    if tokens and tokens[0] == ROOT:
        if scope is None:
            return MISSING
        value, tokens = scope.root, tokens[1:]
    elif tokens and tokens[0] == INDEX:
        return MISSING if scope is None or scope.index is None else scope.index
    for token in tokens:
        if isinstance(token, int):
            if isinstance(value, list) and -len(value) <= token < len(value):
                value = value[token]
            else:
                return MISSING
        elif isinstance(value, dict) and token in value:
            value = value[token]
        else:
            return MISSING
    return value
