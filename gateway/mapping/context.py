"""What a mapping needs to know besides the record: connection settings and id lookups."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Resolver = Callable[[str, str], "str | None"]

# ISO 4217 minor-unit exponents that are not 2 (everything else is 2).
CURRENCY_EXPONENTS: dict[str, int] = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    "CLF": 4, "UYW": 4,
}


def currency_exponent(code: str) -> int:
    """Return the ISO 4217 minor-unit exponent of ``code`` (2 unless listed otherwise)."""
    return CURRENCY_EXPONENTS.get(code.upper(), 2)


@dataclass(frozen=True)
class Scope:
    """Where the engine is: the top-level record and the index in the innermost ``each`` list."""

    root: Any
    index: int | None = None


@dataclass(frozen=True)
class MappingContext:
    """Per-connection inputs of a mapping.

    Attributes:
        settings: the connection's settings (``currency``, ``timezone``, ...), read by ``setting:``
            sources and by transforms such as ``minor_units`` without an explicit exponent.
        resolve: ``(entity, remote_id) -> gateway id or None``; used by ``id_ref`` /
            ``id_ref_list`` on reads, e.g. ``resolve("categories", "2") -> "cat_..."``.
            Synchronous: a connector preloads the id map of a page before mapping it.
        remote: ``(entity, gateway_id) -> remote id or None``; used by ``remote_ref`` on writes.
        scope: set by the engine while mapping (the record root and the current ``each``
            index, for ``$root`` / ``$index`` paths); leave it ``None``.
    """

    settings: Mapping[str, Any] = field(default_factory=dict)
    resolve: Resolver | None = None
    remote: Resolver | None = None
    scope: Scope | None = None

    def currency(self) -> str | None:
        """The connection's ``currency`` setting, or ``None``."""
        value = self.settings.get("currency")
        return value if isinstance(value, str) else None
