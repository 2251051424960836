"""Pure POS arithmetic for the local engine: money, quantities, taxes, tenders, refunds.

No I/O here: every function takes and returns :class:`decimal.Decimal` (never ``float``) or
plain values, so the rules can be tested in isolation and reused.

Units:
    money     Decimal in the currency's major unit (pounds), quantized to the currency's minor
              unit (:func:`minor_exponent`) with ``ROUND_HALF_UP`` whenever it is *computed*.
    quantity  Decimal in the product's unit, at most 3 decimals; stored as integer thousandths
              ("milli") in ``stock_levels``/``stock_movements``.
    rate      Decimal percent (``Decimal("20")`` is 20 %).

Errors: the functions that check client input raise :class:`gateway.errors.ValidationFailed`
(422) with a field-level ``errors`` list; everything else is total.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any

from gateway.errors import ValidationFailed

#: ISO 4217 minor-unit exponents that differ from the default of 2.
CURRENCY_EXPONENTS: dict[str, int] = {
    "JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "UGX": 0, "XAF": 0, "XOF": 0, "PYG": 0, "RWF": 0,
    "KWD": 3, "BHD": 3, "OMR": 3, "JOD": 3, "IQD": 3, "LYD": 3, "TND": 3,
}
DEFAULT_EXPONENT = 2
RATE_PLACES = Decimal("0.0001")  # tax rates carry at most 4 decimals (the Rate type)
HUNDRED = Decimal(100)
MILLI = 1000
#: Computed amounts and rates must fit the model's decimal strings (at most 15 integer digits).
MAX_AMOUNT = Decimal(10) ** 15


class AmountOutOfRange(ValueError):
    """A computed amount or rate has more than 15 integer digits (the caller answers 422)."""


def in_range(value: Decimal, what: str) -> Decimal:
    """``value`` unchanged, or :class:`AmountOutOfRange` when it has more than 15 integer digits."""
    if abs(value) >= MAX_AMOUNT:
        raise AmountOutOfRange(f"{what} is out of range (at most 15 integer digits)")
    return value


# -- money --------------------------------------------------------------------------------------
def minor_exponent(currency: str) -> int:
    """Number of decimals of ``currency``'s minor unit (GBP 2, JPY 0, KWD 3; unknown codes 2)."""
    return CURRENCY_EXPONENTS.get(currency.upper(), DEFAULT_EXPONENT)


def quantum(currency: str) -> Decimal:
    """The smallest amount of ``currency`` as a Decimal (``Decimal("0.01")`` for GBP)."""
    return Decimal(1).scaleb(-minor_exponent(currency))


def quantize_money(value: Decimal, currency: str) -> Decimal:
    """Round a computed amount to ``currency``'s minor unit, half up (``2.345`` GBP → ``2.35``)."""
    return value.quantize(quantum(currency), rounding=ROUND_HALF_UP)


def money_str(value: Decimal, currency: str) -> str:
    """Render an amount with at least the currency's decimals, keeping any finer given precision.

    Computed amounts are already quantized, so they render with exactly the minor unit
    (``"3.50"``, ``"120"`` JPY); a client-given unit price such as ``"0.1234"`` keeps its 4 decimals.
    """
    q = quantum(currency)
    rounded = value.quantize(q, rounding=ROUND_HALF_UP)
    if rounded == value:
        value = rounded
    else:
        value = value.normalize()
    if value == 0:
        return format(abs(rounded), "f")
    return format(value, "f")


# -- quantities ---------------------------------------------------------------------------------
def to_milli(quantity: Decimal | str) -> int:
    """A quantity (at most 3 decimals) as integer thousandths. ``Decimal("1.25")`` → ``1250``.

    Raises:
        ValueError: more than 3 decimals.
    """
    value = Decimal(quantity) * MILLI
    if value != value.to_integral_value():
        raise ValueError(f"quantity {quantity} has more than 3 decimals")
    return int(value)


def qty_str(milli: int) -> str:
    """Canonical quantity string from thousandths: no trailing zeros, ``"0"`` for zero.

    ``10000`` → ``"10"``, ``1250`` → ``"1.25"``, ``-500`` → ``"-0.5"``.
    """
    if milli == 0:
        return "0"
    return format(Decimal(milli).scaleb(-3).normalize(), "f")


def qty_norm(quantity: Decimal) -> str:
    """Canonical string of a Decimal quantity (same rendering as :func:`qty_str`)."""
    return qty_str(to_milli(quantity))


def rate_str(rate: Decimal) -> str:
    """Canonical percent string: ``Decimal("20.00")`` → ``"20"``, ``Decimal("8.250")`` → ``"8.25"``."""
    if rate == 0:
        return "0"
    return format(rate.normalize(), "f")


# -- taxes --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TaxComponent:
    """One tax of a product: ``rate`` percent; ``compound`` applies to price plus earlier taxes."""

    name: str
    rate: Decimal
    compound: bool = False


def components_from(taxes: Iterable[Any] | None, tax_rate: Decimal | None) -> list[TaxComponent]:
    """The product's tax components from a write's ``taxes`` / ``tax_rate``.

    ``taxes`` (objects or dicts with name/rate/compound) wins; else ``tax_rate`` gives one
    component ``{"name": "Tax", "rate": tax_rate, "compound": false}``; else none. Zero-rate
    components are kept (they document a zero-rated item).
    """
    if taxes is not None:
        out = []
        for tax in taxes:
            get = tax.get if isinstance(tax, dict) else (lambda k, _t=tax: getattr(_t, k))
            out.append(TaxComponent(str(get("name")), Decimal(str(get("rate"))), bool(get("compound"))))
        return out
    if tax_rate is not None:
        return [TaxComponent("Tax", Decimal(tax_rate), False)]
    return []


def tax_factors(components: Sequence[TaxComponent]) -> list[Decimal]:
    """Each component's tax as a fraction of the net price, in order.

    A simple tax is ``rate/100`` of net; a compound one is ``rate/100`` of (net + earlier taxes).
    """
    factors: list[Decimal] = []
    running = Decimal(1)
    for comp in components:
        r = comp.rate / HUNDRED
        f = running * r if comp.compound else r
        factors.append(f)
        running += f
    return factors


def effective_rate(components: Sequence[TaxComponent]) -> Decimal:
    """Combined percent of all components (gross = net × (1 + rate/100)), rounded half up to 4 decimals.

    5 % then 10 % compound → ``15.5``; 20 % alone → ``20``.
    """
    total = in_range(sum(tax_factors(components), Decimal(0)) * HUNDRED, "the combined tax rate")
    return total.quantize(RATE_PLACES, rounding=ROUND_HALF_UP)


@dataclass
class LineAmounts:
    """The money of one order line (all quantized to the currency).

    ``gross_before_discount`` = quantity × unit_price; ``taxes`` = [(component, amount)];
    ``total`` = what the customer pays for the line, tax included.
    """

    gross_before_discount: Decimal
    discount: Decimal
    net: Decimal
    taxes: list[tuple[TaxComponent, Decimal]] = field(default_factory=list)
    total: Decimal = Decimal(0)

    @property
    def tax_total(self) -> Decimal:
        return sum((amount for _, amount in self.taxes), Decimal(0))


def line_amounts(
    quantity: Decimal,
    unit_price: Decimal,
    discount: Decimal,
    components: Sequence[TaxComponent],
    *,
    inclusive: bool,
    currency: str,
) -> LineAmounts:
    """Price one line.

    ``base`` = round(quantity × unit_price) − discount (the discount is money off the whole line).

    * exclusive: ``net`` = base; each tax = round(rate × (net [+ earlier taxes if compound])),
      computed on the already rounded earlier taxes; ``total`` = net + taxes.
    * inclusive: ``total`` = base; ``net`` = round(base / (1 + effective)); each tax but the last =
      round(exact net × factor); the last takes the residue so ``net + taxes == total`` exactly.

    Raises:
        ValueError: the discount exceeds quantity × unit_price (the caller turns it into a 422).
    """
    gross = quantize_money(in_range(quantity * unit_price, "quantity × unit_price"), currency)
    discount = quantize_money(discount, currency)
    if discount > gross:
        raise ValueError("discount exceeds the line amount")
    base = gross - discount
    if not inclusive:
        taxes: list[tuple[TaxComponent, Decimal]] = []
        earlier = Decimal(0)
        for comp in components:
            on = base + earlier if comp.compound else base
            amount = quantize_money(in_range(on * comp.rate / HUNDRED, "a line tax"), currency)
            taxes.append((comp, amount))
            earlier += amount
        return LineAmounts(gross, discount, base, taxes, in_range(base + earlier, "the line total"))
    factors = tax_factors(components)
    divisor = Decimal(1) + sum(factors, Decimal(0))
    exact_net = base / divisor
    net = quantize_money(exact_net, currency)
    taxes = []
    allocated = Decimal(0)
    for index, (comp, factor) in enumerate(zip(components, factors, strict=True)):
        if index == len(components) - 1:
            amount = base - net - allocated
        else:
            amount = quantize_money(exact_net * factor, currency)
        taxes.append((comp, amount))
        allocated += amount
    if not components:
        net = base
    return LineAmounts(gross, discount, net, taxes, base)


# -- tenders ------------------------------------------------------------------------------------
@dataclass
class Settlement:
    """How the tenders settle a total: ``amount_paid`` = tendered − ``change_due``."""

    tendered: Decimal
    change_due: Decimal
    amount_paid: Decimal
    credit: Decimal
    payment_status: str  # paid | partial | unpaid


def settle(total: Decimal, payments: Sequence[tuple[str, Decimal]], currency: str) -> Settlement:
    """Settle ``total`` with ``payments`` [(method, amount)].

    Only cash can be overpaid: the cash overpayment is ``change_due``. ``payment_status`` is
    ``paid`` when amount_paid ≥ total (a zero total is paid), ``partial`` when some was paid,
    else ``unpaid``. ``credit`` is the sum of ``credit`` tenders (charged to the customer's account).

    Raises:
        ValidationFailed: ``overpaid`` when non-cash tenders alone exceed the total.
    """
    amounts = [(method, quantize_money(amount, currency)) for method, amount in payments]
    tendered = sum((a for _, a in amounts), Decimal(0))
    if tendered >= MAX_AMOUNT:
        raise ValidationFailed(
            "the tendered amount is out of range",
            errors=[{"loc": ["body", "payments"], "msg": "the tenders add up to more than 15 integer digits", "type": "amount_out_of_range"}],
        )
    non_cash = sum((a for m, a in amounts if m != "cash"), Decimal(0))
    credit = sum((a for m, a in amounts if m == "credit"), Decimal(0))
    if non_cash > total:
        raise ValidationFailed(
            "only cash can be overpaid: the non-cash tenders exceed the order total",
            code="overpaid",
            errors=[{"loc": ["body", "payments"], "msg": f"non-cash tenders {non_cash} exceed the total {total}", "type": "overpaid"}],
        )
    change = max(tendered - total, Decimal(0))
    paid = tendered - change
    if paid >= total:
        status = "paid"
    elif paid > 0:
        status = "partial"
    else:
        status = "unpaid"
    return Settlement(tendered, change, paid, credit, status)


def loyalty_points(amount_paid: Decimal, per_unit: int) -> int:
    """Points earned: ``floor(amount_paid) × per_unit`` (whole currency units only)."""
    if per_unit <= 0 or amount_paid <= 0:
        return 0
    return int(amount_paid.to_integral_value(rounding=ROUND_DOWN)) * per_unit


# -- refunds ------------------------------------------------------------------------------------
def refund_line_amount(
    line_total: Decimal,
    line_milli: int,
    refund_milli: int,
    refunded_milli: int,
    refunded_amount: Decimal,
    currency: str,
) -> Decimal:
    """Money returned for ``refund_milli`` thousandths of a line.

    round(line_total × refund/line_qty); the refund that completes the line takes the exact
    remainder (line_total − already refunded), so a line's refunds always sum to its total.
    """
    if refunded_milli + refund_milli >= line_milli:
        return line_total - refunded_amount
    return quantize_money(line_total * Decimal(refund_milli) / Decimal(line_milli), currency)


def proportional_share(part_cumulative: Decimal, whole: Decimal, amount: Decimal, currency: str) -> Decimal:
    """round(amount × part_cumulative / whole), clamped to [0, amount]; exact ``amount`` when part ≥ whole.

    Used cumulatively (share after − share before) so the shares of successive refunds sum
    to ``amount`` exactly once the order is fully refunded.
    """
    if whole <= 0 or part_cumulative <= 0:
        return Decimal(0) if whole > 0 else amount
    if part_cumulative >= whole:
        return amount
    return quantize_money(amount * part_cumulative / whole, currency)
