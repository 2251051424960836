"""Named transforms of the mapping engine, registered in one explicit dict (:data:`TRANSFORMS`).

A mapping file names a transform (``transform: minor_units``) with ``args``; the engine looks
the name up in :data:`TRANSFORMS` at load time (an unknown name or an unknown/missing arg is a
load error) and calls ``transform.fn(value, args, context)`` per record.

Conventions:
    * Numbers are :class:`decimal.Decimal` and never pass through float arithmetic. A vendor
      float (``3.5`` parsed by a JSON library) is converted through ``str()`` of the parsed
      value, i.e. its shortest repr, so ``3.5`` becomes ``Decimal("3.5")`` and
      ``0.30000000000000004`` stays exactly that until ``places`` rounds it.
    * ``null`` passes through unchanged (the engine does not call a transform on ``None``)
      unless the transform says it handles nulls (``id_ref_list``, ``enum_map``, ``bool``...).
    * Rounding (``rounding`` arg wherever places shrink): ``half_up`` (default: commercial
      rounding, what receipts print), ``half_even``, ``down`` (towards zero), ``up``, ``floor``,
      ``ceiling``, or ``strict`` (an inexact value is an error).
    * A transform raises :class:`~gateway.mapping.errors.TransformError`; the engine adds the
      file, field path and value.
"""

from __future__ import annotations

import base64
import decimal
import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.jsonutil import JsonNumber
from gateway.mapping.context import MappingContext, currency_exponent
from gateway.mapping.errors import TransformError
from gateway.mapping.paths import MISSING, compile_path, resolve_path

TransformFn = Callable[[Any, Mapping[str, Any], MappingContext], Any]

ROUNDINGS: dict[str, str | None] = {
    "half_up": decimal.ROUND_HALF_UP,
    "half_even": decimal.ROUND_HALF_EVEN,
    "down": decimal.ROUND_DOWN,
    "up": decimal.ROUND_UP,
    "floor": decimal.ROUND_FLOOR,
    "ceiling": decimal.ROUND_CEILING,
    "strict": None,
}

# Enough precision for any money or quantity a POS sends (huge ints stay exact up to 60 digits).
_CONTEXT = decimal.Context(prec=60, traps=[InvalidOperation, decimal.DivisionByZero, decimal.Overflow])


@dataclass(frozen=True)
class Transform:
    """A registered transform.

    Attributes:
        name: the name used in mapping files.
        fn: ``fn(value, args, context) -> value``; raises :class:`TransformError`.
        args: the arg names allowed (``None``: any, checked by ``check``); ``required`` those
            that must be given.
        nulls: ``True`` when ``fn`` is called with ``None`` too (else ``None`` passes through).
        check: optional load-time check of ``args``; raises :class:`TransformError`.
    """

    name: str
    fn: TransformFn
    args: frozenset[str] | None = frozenset()
    required: frozenset[str] = frozenset()
    nulls: bool = False
    check: Callable[[Mapping[str, Any]], None] | None = None

    @property
    def doc(self) -> str:
        """The transform function's docstring (units, args, errors)."""
        return (self.fn.__doc__ or "").strip()


# --- numbers -----------------------------------------------------------------------------------


def to_decimal(value: Any) -> Decimal:
    """Parse a JSON number or decimal string into a finite ``Decimal`` exactly.

    ``int`` is exact at any size; ``float`` goes through ``str()`` (``3.5`` → ``Decimal("3.5")``,
    ``1e-07`` → ``Decimal("1E-7")``); ``Decimal`` is taken as is; strings are stripped and must be
    a plain decimal (``"2.55"``, ``"-1"``, ``"1e3"``). Negative zero becomes zero.

    Raises:
        TransformError: booleans, non-numeric strings, NaN and infinities, anything else.
    """
    if isinstance(value, bool):
        raise TransformError("expected a number, got a boolean")
    if isinstance(value, Decimal):
        number = Decimal(value)  # drop JsonNumber-ness
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(str(value))
    elif isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", text):
            raise TransformError("expected a decimal number")
        number = Decimal(text)
    else:
        raise TransformError(f"expected a number, got {type(value).__name__}")
    if not number.is_finite():
        raise TransformError("expected a finite number")
    if number.is_zero() and number.is_signed():
        number = number.copy_abs()
    return number


def _places(args: Mapping[str, Any], context: MappingContext) -> int | None:
    places = args.get("places")
    if places == "currency":
        code = context.currency()
        if code is None:
            raise TransformError('places: currency needs the connection setting "currency"')
        return currency_exponent(code)
    return places


def _quantize(number: Decimal, places: int, rounding: str) -> Decimal:
    """Round ``number`` to exactly ``places`` decimals with the named rounding."""
    exp = Decimal(1).scaleb(-places)
    mode = ROUNDINGS[rounding]
    if mode is None:
        result = number.quantize(exp, context=_CONTEXT)
        if result != number:
            raise TransformError(f"has more than {places} decimal places (rounding: strict)")
        return result
    try:
        return number.quantize(exp, rounding=mode, context=_CONTEXT)
    except InvalidOperation as exc:
        raise TransformError("number too large") from exc


def _strip_zeros(number: Decimal) -> Decimal:
    """``Decimal("15.00")`` → ``Decimal("15")``, ``Decimal("8.250")`` → ``Decimal("8.25")``; never exponent form."""
    if number == number.to_integral_value():
        return number.quantize(Decimal(1), context=_CONTEXT)
    return number.normalize(_CONTEXT)


def _to_int(value: Any, what: str = "an integer") -> int:
    """An integral number (int, integral float/Decimal, digit string) as ``int``."""
    number = to_decimal(value)
    if number != number.to_integral_value():
        raise TransformError(f"expected {what}, got a fraction")
    return int(number)


def _check_rounding(args: Mapping[str, Any]) -> None:
    if "rounding" in args and args["rounding"] not in ROUNDINGS:
        raise TransformError(f"rounding must be one of {sorted(ROUNDINGS)}")
    places = args.get("places")
    if places is not None and places != "currency" and (not isinstance(places, int) or isinstance(places, bool) or not 0 <= places <= 12):
        raise TransformError('places must be an integer 0..12 or "currency"')


def t_decimal(value: Any, args: Mapping[str, Any], context: MappingContext) -> Decimal:
    """Vendor number (JSON number or decimal string) → ``Decimal``, in the same unit.

    Args: ``places`` (int, or ``"currency"`` for the connection currency's minor-unit exponent)
    fixes the number of decimals: ``3.5`` with ``places: 2`` → ``Decimal("3.50")``; extra
    decimals are rounded with ``rounding`` (default ``half_up``). Without ``places`` the value
    keeps its own decimals (``3.5`` → ``Decimal("3.5")``).
    """
    number = to_decimal(value)
    places = _places(args, context)
    if places is not None:
        number = _quantize(number, places, args.get("rounding", "half_up"))
    return number


def t_decimal_to_number(value: Any, args: Mapping[str, Any], context: MappingContext) -> JsonNumber:
    """Unified decimal (``Decimal`` or decimal string, major unit) → vendor JSON number.

    Returns a :class:`gateway.jsonutil.JsonNumber` (a ``Decimal``), never a float: encode the
    write body with :func:`gateway.mapping.dumps_vendor_body`, which writes it as a bare JSON
    number with exactly its digits (``Decimal("4.50")`` → ``4.50``). Args: ``places`` and
    ``rounding`` as for ``decimal``.
    """
    return JsonNumber(t_decimal(value, args, context))


def _exponent(args: Mapping[str, Any], context: MappingContext) -> int:
    if "exponent" in args:
        return args["exponent"]
    code = args.get("currency") or context.currency()
    if not code:
        raise TransformError('needs args.exponent, args.currency or the connection setting "currency"')
    return currency_exponent(code)


def _check_exponent(args: Mapping[str, Any]) -> None:
    _check_rounding(args)
    exp = args.get("exponent")
    if exp is not None and (not isinstance(exp, int) or isinstance(exp, bool) or not 0 <= exp <= 4):
        raise TransformError("exponent must be an integer 0..4")
    if "currency" in args and not (isinstance(args["currency"], str) and re.fullmatch(r"[A-Z]{3}", args["currency"])):
        raise TransformError("currency must be an ISO 4217 code")


def t_minor_units(value: Any, args: Mapping[str, Any], context: MappingContext) -> Decimal:
    """Integer minor units (cents, halalas, fils) → ``Decimal`` in the major unit.

    ``350`` → ``Decimal("3.50")``; ``-350`` → ``Decimal("-3.50")``; exponent 3 (KWD):
    ``1250`` → ``Decimal("1.250")``. The exponent is ``args.exponent``, else the ISO 4217
    exponent of ``args.currency``, else of the connection's ``currency`` setting.

    Raises:
        TransformError: a fraction (minor units are whole numbers) or a non-number.
    """
    exp = _exponent(args, context)
    return Decimal(_to_int(value, "whole minor units")).scaleb(-exp)


def t_to_minor_units(value: Any, args: Mapping[str, Any], context: MappingContext) -> int:
    """``Decimal`` in the major unit → integer minor units: ``Decimal("3.50")`` → ``350``.

    More decimals than the exponent are rounded with ``rounding`` (default ``half_up``;
    ``strict`` refuses). Exponent as for ``minor_units``.
    """
    exp = _exponent(args, context)
    number = _quantize(to_decimal(value), exp, args.get("rounding", "half_up"))
    return int(number.scaleb(exp))


def t_thousandths(value: Any, args: Mapping[str, Any], context: MappingContext) -> Decimal:
    """Integer thousandths (milli-units of quantity) → ``Decimal`` with 3 places.

    ``1250`` → ``Decimal("1.250")``; ``2000`` → ``Decimal("2.000")``. With ``strip_zeros: true``
    trailing zeros are dropped: ``2000`` → ``Decimal("2")``, ``1250`` → ``Decimal("1.25")``.
    """
    number = Decimal(_to_int(value, "whole thousandths")).scaleb(-3)
    return _strip_zeros(number) if args.get("strip_zeros") else number


def _check_strip_zeros(args: Mapping[str, Any]) -> None:
    if "strip_zeros" in args and not isinstance(args["strip_zeros"], bool):
        raise TransformError("strip_zeros must be true or false")


def t_to_thousandths(value: Any, args: Mapping[str, Any], context: MappingContext) -> int:
    """``Decimal`` quantity → integer thousandths: ``Decimal("1.25")`` → ``1250``.

    More than 3 decimals are rounded with ``rounding`` (default ``half_up``).
    """
    number = _quantize(to_decimal(value), 3, args.get("rounding", "half_up"))
    return int(number.scaleb(3))


def t_basis_points(value: Any, args: Mapping[str, Any], context: MappingContext) -> Decimal:
    """Integer basis points (1/100 of a percent) → percent ``Decimal``, trailing zeros dropped.

    ``1500`` → ``Decimal("15")``; ``825`` → ``Decimal("8.25")``; ``5`` → ``Decimal("0.05")``.
    """
    return _strip_zeros(Decimal(_to_int(value, "whole basis points")).scaleb(-2))


def t_to_basis_points(value: Any, args: Mapping[str, Any], context: MappingContext) -> int:
    """Percent ``Decimal`` → integer basis points: ``Decimal("8.25")`` → ``825``.

    More than 2 decimals are rounded with ``rounding`` (default ``half_up``).
    """
    number = _quantize(to_decimal(value), 2, args.get("rounding", "half_up"))
    return int(number.scaleb(2))


def t_to_integer(value: Any, args: Mapping[str, Any], context: MappingContext) -> int:
    """Unified decimal → JSON integer for vendors that take whole quantities.

    ``Decimal("2")`` / ``"2.000"`` → ``2``; a fraction is rounded with ``rounding``
    (default ``strict``: ``"1.5"`` is an error, not silently ``2``).
    """
    number = _quantize(to_decimal(value), 0, args.get("rounding", "strict"))
    return int(number)


def _factors(source: Any, paths: list[Any], scope: Any) -> Decimal:
    product = Decimal(1)
    for path in paths:
        found = resolve_path(source, path, scope)
        if found is MISSING or found is None:
            raise TransformError(f"factor {'.'.join(map(str, path))} is missing")
        product = _CONTEXT.multiply(product, to_decimal(found))
    return product


def _check_factors(args: Mapping[str, Any]) -> None:
    _check_rounding(args)
    factors = args["factors"]
    if not (isinstance(factors, list) and factors and all(isinstance(f, str) for f in factors)):
        raise TransformError("factors must be a non-empty list of paths")


def t_multiply(value: Any, args: Mapping[str, Any], context: MappingContext) -> Decimal:
    """Product of the ``factors`` (paths into the value, usually the current object), exactly.

    ``{quantity: 2, price: 3.5}`` with ``factors: [quantity, price]`` → ``Decimal("7.0")``;
    ``places``/``rounding`` as for ``decimal``. For line totals a vendor leaves out.
    """
    number = _factors(value, [compile_path(p) for p in args["factors"]], context.scope)
    places = _places(args, context)
    return _quantize(number, places, args.get("rounding", "half_up")) if places is not None else number


def t_sum(value: Any, args: Mapping[str, Any], context: MappingContext) -> Decimal:
    """Sum over a list of the product of each element's ``factors``, exactly.

    ``[{quantity: 2, price: 3.5}, {quantity: 1, price: 12}]`` with
    ``factors: [quantity, price]`` → ``Decimal("19.0")``; ``null`` or ``[]`` → ``0``.
    ``places``/``rounding`` as for ``decimal`` (applied to the sum, not per element).
    """
    if value is None:
        value = []
    if not isinstance(value, list):
        raise TransformError("expected a list")
    paths = [compile_path(p) for p in args["factors"]]
    total = Decimal(0)
    for element in value:
        total = _CONTEXT.add(total, _factors(element, paths, None))
    places = _places(args, context)
    return _quantize(total, places, args.get("rounding", "half_up")) if places is not None else total


# --- enums, strings, booleans, ids ------------------------------------------------------------


def _check_enum(args: Mapping[str, Any]) -> None:
    if not isinstance(args["mapping"], dict) or not args["mapping"]:
        raise TransformError("mapping must be a non-empty object")
    if None in args["mapping"]:
        raise TransformError('mapping has a null key: quote it ("null": ...) or use the null arg')
    if "strict" in args and not isinstance(args["strict"], bool):
        raise TransformError("strict must be a boolean")


def t_enum_map(value: Any, args: Mapping[str, Any], context: MappingContext) -> Any:
    """Vendor code → unified value through ``args.mapping`` (exact key, then ``str(value)``).

    ``null`` maps to ``args.null`` (default ``null``). An unknown value maps to ``args.default``
    when given; otherwise (``strict``, the default) it is an error naming the value.
    """
    if value is None:
        return args.get("null")
    mapping = args["mapping"]
    if not isinstance(value, (dict, list)):
        if value in mapping and not isinstance(value, bool):
            return mapping[value]
        if str(value) in mapping:
            return mapping[str(value)]
    if "default" in args:
        return args["default"]
    if args.get("strict", True) is False:
        return None
    raise TransformError(f"unknown value; expected one of {sorted(map(str, mapping))}")


def t_bool(value: Any, args: Mapping[str, Any], context: MappingContext) -> bool | None:
    """``true``/``false``, ``1``/``0``, ``"yes"``/``"no"``, ``"y"``/``"n"``, ``"on"``/``"off"``,
    ``"true"``/``"false"``, ``"1"``/``"0"`` (any case) → ``bool``; ``null`` → ``args.null`` (default ``null``).
    """
    if value is None:
        return args.get("null")
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "y", "on", "1"):
            return True
        if text in ("false", "no", "n", "off", "0"):
            return False
    raise TransformError("expected a boolean")


def _string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return str(value)
    raise TransformError(f"expected a string, got {type(value).__name__}")


def t_string_strip(value: Any, args: Mapping[str, Any], context: MappingContext) -> str | None:
    """Trim whitespace; a blank string becomes ``null`` unless ``empty_as_null: false``."""
    text = _string(value).strip()
    if not text and args.get("empty_as_null", True):
        return None
    return text


def t_lower(value: Any, args: Mapping[str, Any], context: MappingContext) -> str:
    """Lower-case a string (e.g. vendor ``"CASH"`` before an enum map)."""
    return _string(value).lower()


def t_upper(value: Any, args: Mapping[str, Any], context: MappingContext) -> str:
    """Upper-case a string (e.g. a currency code ``"sar"`` → ``"SAR"``)."""
    return _string(value).upper()


def id_string(value: Any) -> str:
    """Vendor id (integer, integral number or string) → ``remote_id`` string: ``42`` → ``"42"``."""
    if isinstance(value, bool):
        raise TransformError("expected an id, got a boolean")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise TransformError("expected an id, got an empty string")
        return text
    if isinstance(value, (int, float, Decimal)):
        return str(_to_int(value, "an integer id"))
    raise TransformError(f"expected an id, got {type(value).__name__}")


def t_id_string(value: Any, args: Mapping[str, Any], context: MappingContext) -> str:
    """Vendor id → ``remote_id`` string: ``42`` → ``"42"``, ``" A1 "`` → ``"A1"``; ``42.5`` is an error."""
    return id_string(value)


def _resolve(context: MappingContext, entity: str, remote_id: str, missing: str) -> str | None:
    if context.resolve is None:
        raise TransformError("id_ref needs context.resolve")
    found = context.resolve(entity, remote_id)
    if found is None and missing == "error":
        raise TransformError(f"no {entity} record with remote id {remote_id!r}")
    return found


def _check_ref(args: Mapping[str, Any]) -> None:
    if not isinstance(args["entity"], str):
        raise TransformError("entity must be a string")
    if args.get("missing", "null") not in ("null", "error"):
        raise TransformError('missing must be "null" or "error"')


def t_id_ref(value: Any, args: Mapping[str, Any], context: MappingContext) -> str | None:
    """Vendor id of another record → its gateway id via ``context.resolve(entity, remote_id)``.

    ``2`` with ``entity: categories`` → ``"cat_..."``. Unresolved: ``null`` (``missing: null``,
    the default) or an error (``missing: error``).
    """
    return _resolve(context, args["entity"], id_string(value), args.get("missing", "null"))


def t_id_ref_list(value: Any, args: Mapping[str, Any], context: MappingContext) -> list[str]:
    """One vendor id or a list of them → a list of gateway ids (``null`` → ``[]``).

    Null elements are skipped; unresolved ids are skipped (``missing: null``) or an error.
    """
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    found = (_resolve(context, args["entity"], id_string(v), args.get("missing", "null")) for v in values if v is not None)
    return [gid for gid in found if gid is not None]


def t_remote_ref(value: Any, args: Mapping[str, Any], context: MappingContext) -> str | int | None:
    """Gateway id → the vendor's id via ``context.remote(entity, gateway_id)`` (writes).

    ``integer: true`` sends it as a JSON integer (Apex ids are integers). Unknown ids: ``null``
    or an error (``missing: error``, the default for writes).
    """
    if context.remote is None:
        raise TransformError("remote_ref needs context.remote")
    found = context.remote(args["entity"], _string(value))
    if found is None:
        if args.get("missing", "error") == "error":
            raise TransformError(f"no {args['entity']} record with id {value!r} at this connection")
        return None
    return _to_int(found, "an integer id") if args.get("integer") else found


_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789abcdefghjkmnpqrstvwxyz")


def t_composite_id(value: Any, args: Mapping[str, Any], context: MappingContext) -> str:
    """Join several parts of the value into one id: ``parts: [product_id, warehouse_id]`` → ``"1:1"``.

    For records the vendor identifies by a pair (stock rows) or not at all (invoice lines:
    ``[$root.id, $index]``). ``separator`` defaults to ``":"``; a missing part is an error.
    With ``prefix`` (e.g. ``line``) the joined key becomes a gateway-style id instead:
    ``line_`` + 26 Crockford base32 characters of its SHA-256, the same key always giving the
    same id (stable across re-syncs).
    """
    out = []
    for part in args["parts"]:
        found = resolve_path(value, compile_path(part), context.scope)
        if found is MISSING or found is None:
            raise TransformError(f"id part {part} is missing")
        out.append(id_string(found))
    joined = args.get("separator", ":").join(out)
    if args.get("prefix"):
        digest = hashlib.sha256(joined.encode()).digest()[:16]
        return f"{args['prefix']}_{base64.b32encode(digest)[:26].translate(_CROCKFORD).decode()}"
    return joined


def _check_parts(args: Mapping[str, Any]) -> None:
    parts = args["parts"]
    if not (isinstance(parts, list) and parts and all(isinstance(p, str) for p in parts)):
        raise TransformError("parts must be a non-empty list of paths")
    for part in parts:
        compile_path(part)


def _check_translations(args: Mapping[str, Any]) -> None:
    for lang, fields in args.items():
        if not re.fullmatch(r"[a-z]{2}(-[A-Z]{2})?", lang):
            raise TransformError(f"{lang!r} is not a language code such as ar or pt-BR")
        if not isinstance(fields, dict) or not all(isinstance(p, str) for p in fields.values()):
            raise TransformError(f"{lang}: expected {{field: path}}")
        for path in fields.values():
            compile_path(path)


def t_translations(value: Any, args: Mapping[str, Any], context: MappingContext) -> dict[str, dict[str, str]]:
    """Collect translated fields of the current object: args ``{lang: {field: path}}``.

    ``{ar: {name: name_ar}}`` on ``{"name_ar": "إسبريسو"}`` → ``{"ar": {"name": "إسبريسو"}}``.
    Blank or missing values are left out, and so is a language with none.
    """
    out: dict[str, dict[str, str]] = {}
    for lang, fields in args.items():
        found: dict[str, str] = {}
        for name, path in fields.items():
            text = resolve_path(value, compile_path(path), context.scope)
            if text is MISSING or text is None:
                continue
            text = _string(text).strip()
            if text:
                found[name] = text
        if found:
            out[lang] = found
    return out


# --- dates -------------------------------------------------------------------------------------


def _zone(name: str) -> Any:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TransformError(f"unknown time zone {name!r}") from exc


def _check_date(args: Mapping[str, Any]) -> None:
    fmt = args.get("format", "iso")
    if not isinstance(fmt, str) or (fmt not in ("iso", "unix", "unix_ms", "date") and "%" not in fmt):
        raise TransformError('format must be iso, unix, unix_ms, date or a strptime pattern')
    if "tz" in args:
        _zone(args["tz"])


def t_date(value: Any, args: Mapping[str, Any], context: MappingContext) -> datetime:
    """Vendor time → aware UTC ``datetime`` (rendered RFC 3339 ``...Z`` by the JSON layer).

    ``format``: ``iso`` (default; ``2026-04-24T10:32:00Z``, offsets honoured), ``unix``
    (seconds, fractions exact), ``unix_ms`` (milliseconds), ``date`` (``YYYY-MM-DD``, midnight)
    or a ``strptime`` pattern. Naive values are in ``tz`` (IANA name), else the connection's
    ``timezone`` setting, else UTC.
    """
    fmt = args.get("format", "iso")
    if fmt in ("unix", "unix_ms"):
        seconds = to_decimal(value)
        if fmt == "unix_ms":
            seconds = seconds.scaleb(-3)
        micros = int(_quantize(seconds.scaleb(6), 0, "half_even"))
        try:
            return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
        except OverflowError as exc:
            raise TransformError("timestamp out of range") from exc
    if not isinstance(value, str):
        raise TransformError(f"expected a date string, got {type(value).__name__}")
    text = value.strip()
    try:
        if fmt == "iso":
            parsed = datetime.fromisoformat(text)
        elif fmt == "date":
            parsed = datetime.strptime(text, "%Y-%m-%d")
        else:
            parsed = datetime.strptime(text, fmt)
    except ValueError as exc:
        raise TransformError(f"not a date in format {fmt}") from exc
    if parsed.tzinfo is None:
        zone = args.get("tz") or context.settings.get("timezone") or "UTC"
        parsed = parsed.replace(tzinfo=_zone(zone))
    return parsed.astimezone(UTC)


def _t(name: str, fn: TransformFn, *, args: tuple[str, ...] = (), required: tuple[str, ...] = (),
       nulls: bool = False, check: Callable[[Mapping[str, Any]], None] | None = None,
       any_args: bool = False) -> tuple[str, Transform]:
    allowed = None if any_args else frozenset(args) | frozenset(required)
    return name, Transform(name, fn, allowed, frozenset(required), nulls, check)


_ROUND = ("places", "rounding")

#: name → :class:`Transform`. The one place transforms are registered (no reflection).
TRANSFORMS: dict[str, Transform] = dict([
    _t("decimal", t_decimal, args=_ROUND, check=_check_rounding),
    _t("decimal_to_number", t_decimal_to_number, args=_ROUND, check=_check_rounding),
    _t("minor_units", t_minor_units, args=("exponent", "currency"), check=_check_exponent),
    _t("to_minor_units", t_to_minor_units, args=("exponent", "currency", "rounding"), check=_check_exponent),
    _t("thousandths", t_thousandths, args=("strip_zeros",), check=_check_strip_zeros),
    _t("to_thousandths", t_to_thousandths, args=("rounding",), check=_check_rounding),
    _t("basis_points", t_basis_points),
    _t("to_basis_points", t_to_basis_points, args=("rounding",), check=_check_rounding),
    _t("to_integer", t_to_integer, args=("rounding",), check=_check_rounding),
    _t("multiply", t_multiply, args=_ROUND, required=("factors",), check=_check_factors),
    _t("sum", t_sum, args=_ROUND, required=("factors",), nulls=True, check=_check_factors),
    _t("enum_map", t_enum_map, args=("default", "strict", "null"), required=("mapping",), nulls=True, check=_check_enum),
    _t("bool", t_bool, args=("null",), nulls=True),
    _t("string_strip", t_string_strip, args=("empty_as_null",)),
    _t("lower", t_lower),
    _t("upper", t_upper),
    _t("id_string", t_id_string),
    _t("id_ref", t_id_ref, args=("missing",), required=("entity",), check=_check_ref),
    _t("id_ref_list", t_id_ref_list, args=("missing",), required=("entity",), nulls=True, check=_check_ref),
    _t("remote_ref", t_remote_ref, args=("missing", "integer"), required=("entity",), check=_check_ref),
    _t("composite_id", t_composite_id, args=("separator", "prefix"), required=("parts",), check=_check_parts),
    _t("translations", t_translations, any_args=True, check=_check_translations),
    _t("date", t_date, args=("format", "tz"), check=_check_date),
])
