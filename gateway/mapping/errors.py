"""Errors of the mapping engine.

::

    MappingError      a mapping file is invalid, or a record cannot be mapped
    TransformError    raised inside a transform; the engine re-raises it as MappingError
                      with the file, direction, field path and vendor value added

``MappingError`` is deliberately not a :class:`gateway.errors.TillgateError`: the same failure is
the vendor's fault on a read (callers raise ``VendorError``) and the client's on a write (callers
raise ``ValidationFailed``).
"""

from __future__ import annotations

from typing import Any

_NO_VALUE = object()


class MappingError(ValueError):
    """A mapping file is invalid or a record does not fit it.

    Attributes:
        file: the mapping file (path as given to :func:`load_mapping`), or ``None``.
        field: dotted path of the field being produced (``"read.lines[1].unit_price"``), or
            the location in the file for load errors.
        value: the offending vendor (or request) value, when there is one.
        reason: what is wrong, without the location.
    """

    def __init__(self, reason: str, *, file: str | None = None, field: str | None = None, value: Any = _NO_VALUE) -> None:
        self.reason = reason
        self.file = file
        self.field = field
        self.has_value = value is not _NO_VALUE
        self.value = value if self.has_value else None
        super().__init__(self._message())

    def _message(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        text = f"{where}: {self.reason}" if where else self.reason
        if self.has_value:
            text += f" (value {self.value!r})"
        return text


class TransformError(ValueError):
    """A transform refused its input (or its args); the message says why, without location."""
