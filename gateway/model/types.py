"""Field types of the unified model: decimal strings, currencies, timestamps.

Money, quantities and rates travel as decimal *strings* (``"2.55"``, ``"1.250"``, ``"8.25"``) and
are :class:`decimal.Decimal` in Python; a JSON number is refused so no float ever enters.

Units:
    Money     amount in the currency's major unit (pounds, not pence); at most 4 decimals in,
              rendered with the currency's minor-unit exponent by the services.
    Quantity  count or measure in the product's ``unit``; at most 3 decimals (thousandths).
    Rate      percent (``"20"`` is 20 %); at most 4 decimals.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, PlainSerializer, StringConstraints, WithJsonSchema

from gateway.jsonutil import JsonNumber

DECIMAL_PATTERN = r"^-?[0-9]{1,15}(\.[0-9]{1,6})?$"
_DECIMAL_RE = re.compile(DECIMAL_PATTERN)


def _decimal_places(max_places: int):
    def check(value: Any) -> Decimal:
        if isinstance(value, Decimal) and not isinstance(value, JsonNumber):
            number = value
        elif isinstance(value, str) and _DECIMAL_RE.fullmatch(value):
            try:
                number = Decimal(value)
            except InvalidOperation as exc:  # pragma: no cover - the pattern excludes it
                raise ValueError("not a decimal string") from exc
        elif isinstance(value, (bool, int, float, JsonNumber)):
            raise ValueError('must be a decimal string such as "2.55", not a JSON number')
        else:
            raise ValueError('must be a decimal string such as "2.55"')
        if not number.is_finite():
            raise ValueError("must be a finite decimal")
        exponent = number.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > max_places:
            raise ValueError(f"at most {max_places} decimal places")
        return number

    return check


def _render(value: Decimal) -> str:
    return format(value, "f")


def _decimal_type(max_places: int, description: str, *, minimum: Decimal | None = None):
    pattern = rf"^-?[0-9]{{1,15}}(\.[0-9]{{1,{max_places}}})?$" if minimum is None or minimum < 0 else (
        rf"^[0-9]{{1,15}}(\.[0-9]{{1,{max_places}}})?$"
    )
    validators: list[Any] = [BeforeValidator(_decimal_places(max_places))]
    if minimum is not None:
        def at_least(value: Decimal, _min: Decimal = minimum) -> Decimal:
            if value < _min or (_min >= 0 and value.is_signed()):  # "-0" is refused like the pattern does
                raise ValueError(f"must be at least {_min}")
            return value

        validators.append(AfterValidator(at_least))
    return Annotated[
        Decimal,
        *validators,
        PlainSerializer(_render, return_type=str, when_used="json"),
        WithJsonSchema({"type": "string", "pattern": pattern, "description": description}),
    ]


Money = _decimal_type(4, "amount in the currency's major unit, as a decimal string")
NonNegativeMoney = _decimal_type(4, "non-negative amount in the currency's major unit", minimum=Decimal(0))
Quantity = _decimal_type(3, "quantity in the product's unit, at most 3 decimals")
PositiveQuantity = _decimal_type(3, "positive quantity, at most 3 decimals", minimum=Decimal("0.001"))
NonNegativeQuantity = _decimal_type(3, "non-negative quantity, at most 3 decimals", minimum=Decimal(0))
Rate = _decimal_type(4, "percent, e.g. \"20\" for 20 %", minimum=Decimal(0))

Currency = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Z]{3}$"),
    WithJsonSchema({"type": "string", "pattern": "^[A-Z]{3}$", "description": "ISO 4217 code"}),
]


def _to_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _render_time(value: datetime) -> str:
    value = _to_utc(value).replace(tzinfo=None)
    return value.isoformat() + "Z"


Timestamp = Annotated[
    datetime,
    AfterValidator(_to_utc),
    PlainSerializer(_render_time, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time", "description": "RFC 3339 UTC"}),
]

Text = Annotated[str, StringConstraints(min_length=1, max_length=500, strip_whitespace=True)]
LongText = Annotated[str, StringConstraints(max_length=10_000)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=120, strip_whitespace=True)]
