"""Import the UCI "Online Retail" transaction format as catalog, customers, stock and sales history.

Format (``tillgate import retail FILE``): CSV with the header
``InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country`` (any column
order). Money is GBP; ``InvoiceDate`` is ``YYYY-MM-DD HH:MM[:SS]`` or the original
``M/D/YYYY H:MM``, taken as UTC. The file is replayed through the connection's POS engine (the
``local`` connector): what the engine does with a sale (stock, totals, events) happens exactly as
for a live sale, only backdated.

Rules (also listed in every :class:`~gateway.importers.summary.ImportSummary` as ``rules``):

Lines
    Every data line ends as exactly one outcome: ``sale_line``, ``refund_line``, ``adjustment``
    (imported) or skipped with a reason code: ``malformed`` (missing fields, bad number or date,
    zero quantity), ``non_merchandise``, ``unusable_product``, ``zero_price``,
    ``unsupported_invoice``, ``credit_positive_quantity``, ``credit_no_customer``,
    ``credit_unmatched``, ``not_tracked``, ``rejected`` (the engine refused it) and
    ``already_imported`` (a re-run).

Usable StockCode (one product each)
    *Merchandise codes* are five digits with an optional letter suffix (``85123A``, ``15056bl``);
    the suffix is upper-cased, so ``85123a`` and ``85123A`` are one SKU ``85123A``. Every other code
    (``POST``, ``DOT``, ``C2``, ``M``, ``D``, ``S``, ``CRUK``, ``AMAZONFEE``, ``BANK CHARGES``,
    ``PADS``, ``gift_0001_*``, ``DCGS*``) is postage, a fee, a discount, a manual entry, a voucher
    or a marketplace-only code, not stock: its lines are skipped (``non_merchandise``). A
    merchandise code is *usable* when at least one of its well-formed lines (any invoice) has a
    non-empty description and a ``UnitPrice`` > 0 (a *qualifying* line); codes seen only with empty
    descriptions or zero prices are not products and their lines are skipped
    (``unusable_product``). Name = the most frequent cleaned description (whitespace collapsed)
    among qualifying lines; catalog price = the most frequent ``UnitPrice`` among qualifying lines;
    ties go to the alphabetically first name and the lowest price. Products are GBP, tax rate 20 %,
    tax-inclusive, unit ``each``, tracking inventory. An existing product with the SKU is reused
    unchanged.

Customers
    One per distinct non-empty ``CustomerID`` (``12346`` and ``12346.0`` are the same), named
    ``Customer 12346`` (the name is the re-run marker), address country from the customer's
    earliest line. Lines without a CustomerID are guest sales.

Sales
    Each ordinary invoice (number of digits) with at least one sale line (usable product,
    Quantity > 0, UnitPrice > 0) becomes one completed order: ``number`` = InvoiceNo,
    ``placed_at`` = its earliest InvoiceDate, its customer, one order line per sale line in file
    order (repeated StockCodes stay separate lines) at the line's own UnitPrice, paid in full
    with one ``card`` tender (the retailer sold online). Prices are VAT-inclusive, so the order
    total is the sum of round(Quantity × UnitPrice, 2).

Zero prices, write-offs, empty descriptions
    A positive-quantity line with UnitPrice 0 ("check", "amazon", free samples, unexplained stock
    lines) is not a sale: skipped (``zero_price``). A negative-quantity line on an ordinary invoice
    ("thrown away", "damages", "?") is a stock write-off: an inventory adjustment with reason
    ``correction`` and reference ``import:writeoff:<InvoiceNo>:<line>``. An empty description is
    never a reason on its own (the product's name comes from the catalog rule); in this data every
    empty-description line has UnitPrice 0 and so falls under one of the two rules above.

Credit notes (InvoiceNo ``C...``)
    Each credit line is matched to an earlier imported sale line of the same SKU to the same
    customer, placed at or before the credit note's date, with at least the credited quantity
    still unrefunded; among those the ones at the same unit price are preferred, then the latest.
    The matched quantities are refunded through the engine on those order lines (one refund per
    order and credit note, ``restock`` true, reason ``credit note C536379``, ``refunded_at`` = the
    credit note's date); the engine computes the money pro rata from the line total. A credit
    line without a CustomerID, or without such a sale, is skipped with the reason.

Opening stock
    Before the replay each tracked product gets a ``restock`` adjustment (reference
    ``import:opening-stock``) that raises its on hand at "Main" to the total quantity the
    not-yet-imported invoices take out of stock (sales plus write-offs), so no sale fails for lack
    of stock. Refunds put stock back, so this is an upper bound.

Re-runs
    Products are matched by SKU, customers by name, orders by number, refunds by their reason,
    write-offs by reference; what exists is skipped as ``already_imported``, so importing the same
    file twice creates nothing new.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.errors import TillgateError
from gateway.importers._common import (
    csv_rows,
    error_text,
    load_records,
    main_location_id,
    on_hand_by_product,
    parse_decimal,
    read_text,
    stock_references,
)
from gateway.importers.summary import ImportFileError, ImportSummary
from gateway.model import (
    Address,
    AdjustmentCreate,
    CustomerCreate,
    OrderCreate,
    OrderLineCreate,
    PaymentCreate,
    ProductCreate,
    RefundCreate,
    RefundLineCreate,
)
from gateway.sdk.connector import Connector

COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
CURRENCY = "GBP"
TAX_RATE = Decimal(20)
TENDER = "card"
OPENING_STOCK_REFERENCE = "import:opening-stock"
WRITEOFF_PREFIX = "import:writeoff:"
CREDIT_REASON_PREFIX = "credit note "
CUSTOMER_NAME_PREFIX = "Customer "
MERCHANDISE_RE = re.compile(r"^[0-9]{5}[A-Za-z]*$")
SALE_INVOICE_RE = re.compile(r"^[0-9]+$")
CREDIT_INVOICE_RE = re.compile(r"^C[0-9]+$")
DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y %H:%M:%S")
CENT = Decimal("0.01")

RULES = [
    (
        "usable StockCode: five digits plus an optional letter suffix (suffix upper-cased: 85123a = 85123A) "
        "with at least one line that has a description and a UnitPrice > 0; other codes (POST, DOT, M, D, C2, "
        "S, CRUK, AMAZONFEE, BANK CHARGES, PADS, gift_*, DCGS*) are non-merchandise and skipped"
    ),
    (
        "product name = most frequent cleaned description, price = most frequent positive UnitPrice "
        "(ties: first name alphabetically, lowest price); GBP, 20 % VAT inclusive"
    ),
    "one customer per CustomerID, named 'Customer <id>', country from its earliest line",
    (
        "one order per ordinary invoice with sale lines (qty > 0, price > 0), number = InvoiceNo, placed_at = "
        "earliest InvoiceDate (UTC), each line at its own UnitPrice, paid in full by one 'card' tender"
    ),
    (
        "zero-price positive lines are skipped (not sales); negative lines on ordinary invoices are stock "
        "write-offs (adjustment reason 'correction')"
    ),
    (
        "credit-note lines refund the latest earlier sale line of the same SKU to the same customer with enough "
        "unrefunded quantity (same unit price preferred); no CustomerID or no such sale: skipped"
    ),
    (
        "opening stock per tracked product = quantity the remaining invoices take out (restock, "
        "reference import:opening-stock)"
    ),
    (
        "re-runs skip what exists: products by SKU, customers by name, orders by number, refunds by reason, "
        "write-offs by reference"
    ),
]

Progress = Callable[[int, int], None]


# -- parsing ------------------------------------------------------------------------------------
@dataclass
class RetailLine:
    """One well-formed data line. ``sku`` is ``None`` for a non-merchandise StockCode."""

    line: int
    invoice: str
    code: str
    sku: str | None
    description: str
    quantity: Decimal
    unit_price: Decimal
    at: datetime
    customer: str
    country: str


def clean_description(text: str) -> str:
    """Trim and collapse whitespace (``"COOK WITH WINE METAL SIGN "`` → ``"COOK WITH WINE METAL SIGN"``)."""
    return " ".join(text.split())


def merchandise_sku(code: str) -> str | None:
    """The SKU of a merchandise StockCode (suffix upper-cased), or ``None`` for a non-merchandise code."""
    code = code.strip()
    return code.upper() if MERCHANDISE_RE.fullmatch(code) else None


def normalise_customer(text: str) -> str:
    """``"12346.0"`` → ``"12346"``; blank → ``""``."""
    value = text.strip()
    if value.endswith(".0") and value[:-2].isdigit():
        value = value[:-2]
    return value


def parse_date(text: str) -> datetime:
    """Parse an InvoiceDate as UTC.

    Raises:
        ValueError: none of :data:`DATE_FORMATS` fits.
    """
    raw = text.strip()
    for fmt in DATE_FORMATS:
        try:
            return datetime.strptime(raw, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError(f"InvoiceDate {raw!r} is not a date (expected YYYY-MM-DD HH:MM:SS)")


def check_header(header: list[str]) -> dict[str, int]:
    """Map each required column to its index.

    Raises:
        ImportFileError: a column is missing (the message lists the expected header).
    """
    index = {name.strip().lower(): i for i, name in enumerate(header)}
    missing = [c for c in COLUMNS if c.lower() not in index]
    if missing:
        raise ImportFileError(
            "not an Online Retail file: missing column(s) " + ", ".join(missing)
            + ". Expected the header " + ",".join(COLUMNS)
        )
    return {c: index[c.lower()] for c in COLUMNS}


def parse_line(line: int, columns: dict[str, int], fields: list[str]) -> RetailLine:
    """Parse one data row.

    Raises:
        ValueError: the row is malformed; the message says why.
    """
    width = max(columns.values()) + 1
    if len(fields) < width:
        raise ValueError(f"the row has {len(fields)} fields, expected {len(COLUMNS)}")
    cell = {name: fields[i] for name, i in columns.items()}
    invoice = cell["InvoiceNo"].strip()
    code = cell["StockCode"].strip()
    if not invoice:
        raise ValueError("InvoiceNo is empty")
    if not code:
        raise ValueError("StockCode is empty")
    quantity = parse_decimal(cell["Quantity"], "Quantity", places=3)
    if quantity == 0:
        raise ValueError("Quantity is 0")
    price = parse_decimal(cell["UnitPrice"], "UnitPrice", places=4)
    if price < 0:
        raise ValueError(f"UnitPrice {cell['UnitPrice'].strip()!r} is negative")
    return RetailLine(
        line=line,
        invoice=invoice,
        code=code,
        sku=merchandise_sku(code),
        description=clean_description(cell["Description"]),
        quantity=quantity,
        unit_price=price,
        at=parse_date(cell["InvoiceDate"]),
        customer=normalise_customer(cell["CustomerID"]),
        country=cell["Country"].strip(),
    )


# -- planning -----------------------------------------------------------------------------------
@dataclass
class CatalogEntry:
    """A usable StockCode: the product the import creates for it."""

    sku: str
    name: str
    price: Decimal
    codes: set[str] = field(default_factory=set)


@dataclass
class Invoice:
    """A group of lines replayed together: a sale, a credit note or one write-off line."""

    kind: str  # "sale" | "credit" | "writeoff"
    number: str
    at: datetime
    customer: str
    lines: list[RetailLine]

    @property
    def sort_key(self) -> tuple[datetime, str, int]:
        return (self.at, self.number, self.lines[0].line)


@dataclass
class Plan:
    """What the file will become: catalog, customers (id → country) and invoices in replay order."""

    catalog: dict[str, CatalogEntry]
    customers: dict[str, str]
    events: list[Invoice]


def _most_frequent(counter: Counter[Any]) -> Any:
    return min(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def catalog_price(price: Decimal) -> Decimal:
    """A catalog price with at least 2 decimals (``2.1`` → ``2.10``), finer precision kept."""
    return price.quantize(CENT) if price == price.quantize(CENT) else price


def build_plan(lines: list[RetailLine], summary: ImportSummary) -> Plan:
    """Apply the rules of the module docstring to parsed lines.

    Lines that cannot become anything are recorded as skipped in ``summary``; every other line is
    in exactly one event of the returned plan.
    """
    names: dict[str, Counter[str]] = defaultdict(Counter)
    prices: dict[str, Counter[Decimal]] = defaultdict(Counter)
    codes: dict[str, set[str]] = defaultdict(set)
    for ln in lines:
        if ln.sku and ln.description and ln.unit_price > 0:
            names[ln.sku][ln.description] += 1
            prices[ln.sku][ln.unit_price] += 1
            codes[ln.sku].add(ln.code)
    catalog = {
        sku: CatalogEntry(sku, _most_frequent(names[sku]), catalog_price(_most_frequent(prices[sku])), codes[sku])
        for sku in sorted(names)
    }

    customers: dict[str, str] = {}
    for ln in sorted((ln for ln in lines if ln.customer), key=lambda ln: (ln.at, ln.invoice, ln.line)):
        customers.setdefault(ln.customer, ln.country)

    by_invoice: dict[str, list[RetailLine]] = defaultdict(list)
    for ln in lines:
        by_invoice[ln.invoice].append(ln)

    events: list[Invoice] = []
    for number, group in by_invoice.items():
        at = min(ln.at for ln in group)
        customer = next((ln.customer for ln in group if ln.customer), "")
        is_sale = bool(SALE_INVOICE_RE.fullmatch(number))
        is_credit = bool(CREDIT_INVOICE_RE.fullmatch(number))
        sale_lines: list[RetailLine] = []
        credit_lines: list[RetailLine] = []
        for ln in group:
            if ln.sku is None:
                summary.skip(ln.line, "non_merchandise", f"StockCode {ln.code!r} ({ln.description or 'no description'}) "
                             "is postage, a fee, a discount, a manual entry or a voucher, not a stock product")
            elif ln.sku not in catalog:
                summary.skip(ln.line, "unusable_product", f"StockCode {ln.code!r} never appears with a description "
                             "and a positive UnitPrice, so it is not a product")
            elif not (is_sale or is_credit):
                summary.skip(ln.line, "unsupported_invoice", f"InvoiceNo {number!r} is neither a sale (digits) "
                             "nor a credit note (C + digits)")
            elif is_credit:
                if ln.quantity > 0:
                    summary.skip(ln.line, "credit_positive_quantity",
                                 f"credit note {number} line has positive Quantity {ln.quantity}")
                else:
                    credit_lines.append(ln)
            elif ln.quantity < 0:
                events.append(Invoice("writeoff", number, at, customer, [ln]))
            elif ln.unit_price == 0:
                summary.skip(ln.line, "zero_price", f"UnitPrice 0 on invoice {number} "
                             f"({ln.description or 'no description'}): not a sale")
            else:
                sale_lines.append(ln)
        if sale_lines:
            events.append(Invoice("sale", number, at, customer, sale_lines))
        if credit_lines:
            events.append(Invoice("credit", number, at, customer, credit_lines))
    events.sort(key=lambda ev: ev.sort_key)
    return Plan(catalog, customers, events)


def parse_online_retail(text: str, summary: ImportSummary) -> Plan:
    """Parse a whole file into a :class:`Plan`; malformed lines are recorded as skipped.

    Raises:
        ImportFileError: the file is empty or its header lacks a required column.
    """
    header, rows = csv_rows(text)
    columns = check_header(header)
    summary.lines = len(rows)
    lines: list[RetailLine] = []
    for line, fields in rows:
        try:
            lines.append(parse_line(line, columns, fields))
        except ValueError as exc:
            summary.skip(line, "malformed", str(exc))
    return build_plan(lines, summary)


# -- replay -------------------------------------------------------------------------------------
@dataclass
class SaleRef:
    """A sale line available for credit-note matching."""

    order_id: str
    line_id: str
    unit_price: Decimal
    quantity: Decimal
    refunded: Decimal
    at: datetime
    seq: int

    @property
    def left(self) -> Decimal:
        return self.quantity - self.refunded


def _parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def line_total(quantity: Decimal, unit_price: Decimal) -> Decimal:
    """round(quantity × unit_price) to pence, half up (the engine's tax-inclusive line total)."""
    return (quantity * unit_price).quantize(CENT, rounding=ROUND_HALF_UP)


class _Replay:
    """State of one import run: caches of what exists, so no step scans the database per line."""

    def __init__(self, connector: Connector, plan: Plan, summary: ImportSummary, progress: Progress | None) -> None:
        self.connector = connector
        self.plan = plan
        self.summary = summary
        self.progress = progress
        self.done = summary.skipped_lines
        self.products: dict[str, dict[str, Any]] = {}
        self.customers: dict[str, str] = {}  # CSV CustomerID -> customer record id
        self.orders: dict[str, dict[str, Any]] = {}  # number -> order
        self.credited: set[str] = set()  # credit note numbers already refunded
        self.writeoffs: set[str] = set()  # write-off references already applied
        self.sales: dict[tuple[str, str], list[SaleRef]] = defaultdict(list)
        self.refused: dict[str, str] = {}  # sku -> why its product could not be created
        self.location_id = ""
        self.seq = 0

    def tick(self, n: int) -> None:
        self.done += n
        if self.progress:
            self.progress(self.done, self.summary.lines)

    # -- existing state ---------------------------------------------------------------------------
    async def load(self) -> None:
        self.location_id = await main_location_id(self.connector)
        self.products = {p["sku"]: p for p in await load_records(self.connector, "products") if p.get("sku")}
        for customer in await load_records(self.connector, "customers"):
            name = customer.get("name") or ""
            if name.startswith(CUSTOMER_NAME_PREFIX):
                self.customers.setdefault(name[len(CUSTOMER_NAME_PREFIX):], customer["id"])
        csv_id_of = {record_id: csv_id for csv_id, record_id in self.customers.items()}
        orders = await load_records(self.connector, "orders")
        orders.sort(key=lambda o: (o.get("created_at") or "", o["id"]))
        for order in orders:
            if order.get("number"):
                self.orders.setdefault(order["number"], order)
            for refund in order.get("refunds") or []:
                reason = refund.get("reason") or ""
                if reason.startswith(CREDIT_REASON_PREFIX):
                    self.credited.add(reason[len(CREDIT_REASON_PREFIX):].strip())
            self._index_order(order, csv_id_of.get(order.get("customer_id") or "", ""))
        self.writeoffs = await stock_references(self.connector, WRITEOFF_PREFIX)

    def _index_order(self, order: dict[str, Any], customer: str) -> None:
        if not customer or order.get("status") == "voided":
            return
        refunded: dict[str, Decimal] = defaultdict(Decimal)
        for refund in order.get("refunds") or []:
            for rl in refund.get("lines") or []:
                refunded[rl["line_id"]] += Decimal(str(rl["quantity"]))
        at = _parse_ts(order["created_at"])
        for ol in order.get("lines") or []:
            if not ol.get("sku"):
                continue
            self.seq += 1
            self.sales[(customer, ol["sku"])].append(
                SaleRef(order["id"], ol["id"], Decimal(str(ol["unit_price"])), Decimal(str(ol["quantity"])),
                        refunded[ol["id"]], at, self.seq)
            )

    # -- catalog, customers, stock ----------------------------------------------------------------
    async def ensure_products(self) -> None:
        for entry in self.plan.catalog.values():
            if entry.sku in self.products:
                self.summary.records["products_existing"] += 1
                continue
            body = ProductCreate(
                sku=entry.sku, name=entry.name[:500], price=entry.price, currency=CURRENCY, tax_rate=TAX_RATE,
                tax_inclusive=True, unit="each", track_inventory=True,
            )
            try:
                self.products[entry.sku] = await self.connector.create_product(body)
            except TillgateError as exc:
                self.refused[entry.sku] = f"the engine refused product {entry.sku}: {error_text(exc)}"
                continue
            self.summary.records["products_created"] += 1

    async def ensure_customers(self) -> None:
        for csv_id, country in self.plan.customers.items():
            if csv_id in self.customers:
                self.summary.records["customers_existing"] += 1
                continue
            body = CustomerCreate(
                name=f"{CUSTOMER_NAME_PREFIX}{csv_id}", address=Address(country=country[:60] or None), currency=CURRENCY
            )
            created = await self.connector.create_customer(body)
            self.customers[csv_id] = created["id"]
            self.summary.records["customers_created"] += 1

    def _pending(self, event: Invoice) -> bool:
        if event.kind == "sale":
            return event.number not in self.orders
        if event.kind == "credit":
            return event.number not in self.credited
        return self._writeoff_reference(event.lines[0]) not in self.writeoffs

    async def opening_stock(self) -> None:
        needed: dict[str, Decimal] = defaultdict(Decimal)
        for event in self.plan.events:
            if event.kind in ("sale", "writeoff") and self._pending(event):
                for ln in event.lines:
                    needed[ln.sku or ""] += abs(ln.quantity)
        on_hand = await on_hand_by_product(self.connector, self.location_id)
        for sku in sorted(needed):
            product = self.products.get(sku)
            if product is None or sku in self.refused or not product.get("track_inventory", True):
                continue
            delta = needed[sku] - on_hand.get(product["id"], Decimal(0))
            if delta <= 0:
                continue
            await self.connector.create_adjustment(
                AdjustmentCreate(product_id=product["id"], location_id=self.location_id, delta=delta,
                                 reason="restock", reference=OPENING_STOCK_REFERENCE)
            )
            self.summary.records["opening_stock_adjustments"] += 1
            self.summary.records["opening_stock_units"] += int(delta)

    # -- events -----------------------------------------------------------------------------------
    async def run(self) -> None:
        for event in self.plan.events:
            if self.refused:
                kept = [ln for ln in event.lines if ln.sku not in self.refused]
                for ln in event.lines:
                    if ln.sku in self.refused:
                        self.summary.skip(ln.line, "rejected", self.refused[ln.sku or ""])
                if len(kept) != len(event.lines):
                    self.tick(len(event.lines) - len(kept))
                    if not kept:
                        continue
                    event = Invoice(event.kind, event.number, event.at, event.customer, kept)
            if not self._pending(event):
                what = {"sale": "order", "credit": "credit note", "writeoff": "write-off"}[event.kind]
                for ln in event.lines:
                    self.summary.skip(ln.line, "already_imported", f"{what} {event.number} was imported before")
            elif event.kind == "sale":
                await self.sale(event)
            elif event.kind == "credit":
                await self.credit(event)
            else:
                await self.writeoff(event.lines[0])
            self.tick(len(event.lines))

    async def sale(self, event: Invoice) -> None:
        customer_id = self.customers.get(event.customer) if event.customer else None
        due = sum((line_total(ln.quantity, ln.unit_price) for ln in event.lines), Decimal(0))
        try:
            body = OrderCreate(
                location_id=self.location_id,
                customer_id=customer_id,
                number=event.number,
                currency=CURRENCY,
                lines=[
                    OrderLineCreate(product_id=self.products[ln.sku or ""]["id"], quantity=ln.quantity,
                                    unit_price=ln.unit_price)
                    for ln in event.lines
                ],
                payments=[PaymentCreate(method=TENDER, amount=due)],
                placed_at=event.at,
            )
            order = await self.connector.create_order(body)
        except (TillgateError, ValidationError) as exc:
            for ln in event.lines:
                self.summary.skip(ln.line, "rejected", f"invoice {event.number} refused by the engine: {error_text(exc)}")
            return
        self.orders[event.number] = order
        self.summary.imported("sale_line", len(event.lines))
        self.summary.records["orders_created"] += 1
        self.summary.add_total("sales", Decimal(str(order["total"])))
        if event.customer:
            for ln, ol in zip(event.lines, order["lines"], strict=True):
                self.seq += 1
                self.sales[(event.customer, ln.sku or "")].append(
                    SaleRef(order["id"], ol["id"], ln.unit_price, ln.quantity, Decimal(0), event.at, self.seq)
                )

    def _match(self, customer: str, ln: RetailLine, at: datetime) -> SaleRef | None:
        wanted = -ln.quantity
        candidates = [
            ref for ref in self.sales.get((customer, ln.sku or ""), ()) if ref.at <= at and ref.left >= wanted
        ]
        if not candidates:
            return None
        return max(candidates, key=lambda ref: (ref.unit_price == ln.unit_price, ref.at, ref.seq))

    async def credit(self, event: Invoice) -> None:
        if not event.customer:
            for ln in event.lines:
                self.summary.skip(ln.line, "credit_no_customer",
                                  f"credit note {event.number} has no CustomerID: it cannot be matched to a sale")
            return
        groups: dict[str, list[tuple[RetailLine, SaleRef]]] = defaultdict(list)
        for ln in event.lines:
            ref = self._match(event.customer, ln, event.at)
            if ref is None:
                self.summary.skip(
                    ln.line, "credit_unmatched",
                    f"credit note {event.number}: no earlier sale of {ln.sku} x{-ln.quantity} to customer "
                    f"{event.customer} with that much left to refund",
                )
                continue
            ref.refunded += -ln.quantity
            groups[ref.order_id].append((ln, ref))
        for order_id, matched in groups.items():
            per_line: dict[str, Decimal] = defaultdict(Decimal)
            for ln, ref in matched:
                per_line[ref.line_id] += -ln.quantity
            try:
                body = RefundCreate(
                    lines=[RefundLineCreate(line_id=line_id, quantity=qty) for line_id, qty in per_line.items()],
                    reason=f"{CREDIT_REASON_PREFIX}{event.number}",
                    restock=True,
                    refunded_at=event.at,
                )
                order = await self.connector.refund_order(order_id, body)
            except (TillgateError, ValidationError) as exc:
                for ln, ref in matched:
                    ref.refunded -= -ln.quantity
                    self.summary.skip(ln.line, "rejected",
                                      f"credit note {event.number} refused by the engine: {error_text(exc)}")
                continue
            refund = (order.get("refunds") or [{}])[-1]
            self.summary.imported("refund_line", len(matched))
            self.summary.records["refunds_created"] += 1
            self.summary.add_total("refunds", Decimal(str(refund.get("amount", "0"))))
        self.credited.add(event.number)

    @staticmethod
    def _writeoff_reference(ln: RetailLine) -> str:
        return f"{WRITEOFF_PREFIX}{ln.invoice}:{ln.line}"

    async def writeoff(self, ln: RetailLine) -> None:
        product = self.products[ln.sku or ""]
        if not product.get("track_inventory", True):
            self.summary.skip(ln.line, "not_tracked", f"write-off of {ln.sku}: the product does not track inventory")
            return
        reference = self._writeoff_reference(ln)
        try:
            await self.connector.create_adjustment(
                AdjustmentCreate(product_id=product["id"], location_id=self.location_id, delta=ln.quantity,
                                 reason="correction", reference=reference)
            )
        except (TillgateError, ValidationError) as exc:
            self.summary.skip(ln.line, "rejected", f"write-off {ln.invoice} of {ln.sku} refused: {error_text(exc)}")
            return
        self.writeoffs.add(reference)
        self.summary.imported("adjustment")
        self.summary.records["writeoff_adjustments"] += 1
        self.summary.add_total("writeoff_units", -ln.quantity)


async def import_online_retail(
    connector: Connector, path: str | Path, *, progress: Progress | None = None
) -> ImportSummary:
    """Import a UCI Online Retail CSV through ``connector`` (the ``local`` POS engine).

    Creates products, customers, opening stock, then replays every invoice in InvoiceDate order
    (ties: InvoiceNo, then file line) as sales, refunds and write-offs; see the module docstring
    for every rule.

    Args:
        connector: the connector of the target connection (needs product, customer, order,
            refund and adjustment writes).
        path: the CSV file.
        progress: called as ``progress(lines_done, lines_total)`` as the replay advances.

    Returns:
        An :class:`ImportSummary`: outcomes ``sale_line`` / ``refund_line`` / ``adjustment``,
        skipped lines with reason codes, records created (``products_created``,
        ``customers_created``, ``orders_created``, ``refunds_created``, ...) and totals
        (``sales``, ``refunds`` in GBP as the engine computed them). ``imported + skipped`` equals
        the number of data lines.

    Raises:
        ImportFileError: the file is missing, empty or not in this format (nothing is written).
        TillgateError: the engine refused a customer or an opening-stock write (prerequisites of
            the replay, so the import stops; a re-run continues where it stopped). A product the
            engine refuses does not stop the import: its lines are skipped as ``rejected``.
    """
    started = time.perf_counter()
    summary = ImportSummary(kind="online_retail", source=str(path), rules=list(RULES))
    plan = parse_online_retail(read_text(path), summary)
    replay = _Replay(connector, plan, summary, progress)
    replay.tick(0)
    await replay.load()
    await replay.ensure_products()
    await replay.ensure_customers()
    await replay.opening_stock()
    await replay.run()
    summary.elapsed_s = time.perf_counter() - started
    return summary.finish()
