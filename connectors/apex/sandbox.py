"""An in-memory Apex POS: the fake vendor server the Apex connector is developed and tested against.

It follows ``vendor-docs/apex-pos-api.txt`` (base path ``/rest_api/v1``, ``X-API-Key: apx_...``,
``{"success": ...}`` envelopes, integer ids, money as JSON numbers, ``page``/``limit`` lists with
``limit`` at most 100). Every choice made where the doc is silent is listed in
``connectors/apex/SANDBOX.md``; the fault knobs and ``/_sandbox`` admin routes come from
:mod:`gateway.testing.sandbox`.

Routes (all under ``/rest_api/v1``, all need a valid key):

``GET /products`` (``page``, ``limit``, ``category_id``), ``POST /products``, ``PUT /products/{id}``,
``GET /inventory`` (``warehouse_id``), ``PATCH /inventory/{product_id}`` (absolute quantity),
``POST /invoices``, ``GET /invoices`` (``status``, ``date_from``, ``date_to``, ``page``, ``limit``),
``GET /customers`` (``search``, ``page``, ``limit``), ``POST /customers``, ``GET /health``.

Money is :class:`~decimal.Decimal` inside (2 decimal places) and a JSON number only on the way out,
written the way a JavaScript backend writes it: ``3.5``, and ``19`` for ``19.00``.

Use :func:`create_app` (``tillgate sandbox apex``); its keyword options are documented there.
"""

from __future__ import annotations

import json
import random
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.testing.sandbox import Faults, RetailRow, Sandbox, is_admin_path, paginate, read_retail_csv

BASE_PATH = "/rest_api/v1"
DEFAULT_API_KEYS = ("apx_sandbox_key",)
DEFAULT_LIMIT = 50
MAX_LIMIT = 100
PAYMENT_METHODS = ("cash", "card", "bank")
INVOICE_STATUSES = ("paid", "partial", "unpaid")
CENT = Decimal("0.01")
ZERO = Decimal(0)
INT_MAX = 2**31 - 1  # an INT column
NUMBER_MAX = 9_999_999_999.99  # a DECIMAL(12,2) column

# --- records -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Warehouse:
    """A stock location."""

    id: int
    name: str


@dataclass(slots=True)
class Product:
    """A catalog item; ``stock[i]`` is the quantity in the warehouse with id ``i + 1``."""

    id: int
    name: str
    name_ar: str | None
    price: Decimal
    cost: Decimal
    barcode: str | None
    category_id: int | None
    tax_rate: Decimal
    stock: list[int]


@dataclass(slots=True)
class Customer:
    """A customer account; ``balance`` is what the customer owes (unpaid invoices)."""

    id: int
    name: str
    phone: str | None = None
    email: str | None = None
    address: str | None = None
    credit_limit: Decimal | None = None
    balance: Decimal = ZERO


@dataclass(slots=True)
class InvoiceItem:
    """One invoice line; ``total`` = round(quantity x price, 2), tax included."""

    product_id: int
    product_name: str
    quantity: int
    price: Decimal
    total: Decimal
    tax: Decimal


@dataclass(slots=True)
class Invoice:
    """A sales invoice (negative quantities and totals for seeded credit notes)."""

    id: int
    invoice_number: str
    customer_id: int | None
    warehouse_id: int
    date: datetime
    items: list[InvoiceItem]
    status: str
    payment_method: str | None
    account_id: int | None = None
    notes: str | None = None
    paid: Decimal = ZERO

    @property
    def total(self) -> Decimal:
        """Sum of the line totals (prices include tax)."""
        return sum((i.total for i in self.items), ZERO)

    @property
    def tax(self) -> Decimal:
        """Sum of the tax contained in the line totals."""
        return sum((i.tax for i in self.items), ZERO)


def money(value: Decimal | float | int | str) -> Decimal:
    """A Decimal rounded half-up to 2 places (how the vendor stores money and tax rates)."""
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


def line_tax(total: Decimal, rate: Decimal) -> Decimal:
    """The tax contained in a tax-inclusive ``total`` at ``rate`` percent, rounded half-up to cents."""
    if not rate:
        return ZERO
    return (total * rate / (100 + rate)).quantize(CENT, rounding=ROUND_HALF_UP)


def make_item(product: Product, quantity: int, price: Decimal) -> InvoiceItem:
    """An invoice line for ``quantity`` x ``product`` at ``price`` (tax-inclusive)."""
    total = (price * quantity).quantize(CENT, rounding=ROUND_HALF_UP)
    return InvoiceItem(product.id, product.name, quantity, price, total, line_tax(total, product.tax_rate))


def num(value: Decimal | None) -> int | float | None:
    """A Decimal as the vendor's JSON number: an int when whole (``19``), else a float (``3.5``)."""
    if value is None:
        return None
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the store -----------------------------------------------------------------------------------

CAFE = [
    ("Espresso", "إسبريسو", "3.50", "1.20"),
    ("Americano", "أمريكانو", "4.00", "1.30"),
    ("Cappuccino", "كابتشينو", "12.00", "3.10"),
    ("Latte", "لاتيه", "4.50", "1.80"),
    ("Mocha", "موكا", "5.25", "2.00"),
    ("Black Tea", "شاي أسود", "2.00", "0.40"),
    ("Croissant", "كرواسون", "3.75", "1.10"),
    ("Blueberry Muffin", "مافن التوت", "4.25", "1.35"),
    ("Mineral Water", "مياه معدنية", "1.50", "0.30"),
    ("Orange Juice", "عصير برتقال", "6.00", "2.25"),
]
FIRST_NAMES = [
    "Sara",
    "Omar",
    "Fatima",
    "Khalid",
    "Layla",
    "Yousef",
    "Noura",
    "Hassan",
    "Mariam",
    "Faisal",
    "Huda",
    "Ali",
]
LAST_NAMES = [
    "Ali",
    "Al-Harbi",
    "Al-Qahtani",
    "Al-Otaibi",
    "Haddad",
    "Nasser",
    "Saleh",
    "Al-Zahrani",
    "Mansour",
    "Karim",
]


def _ean13(number: int) -> str:
    """A valid EAN-13 for a product number (prefix 890, check digit computed)."""
    body = f"890{number:09d}"
    check = (10 - sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body)) % 10) % 10
    return body + str(check)


@dataclass
class ApexStore:
    """The sandbox's data: warehouses, products, customers and invoices, keyed by integer id."""

    business: str = "My Store"
    default_tax_rate: Decimal = Decimal(15)
    allow_negative_stock: bool = False
    warehouses: dict[int, Warehouse] = field(default_factory=dict)
    products: dict[int, Product] = field(default_factory=dict)
    customers: dict[int, Customer] = field(default_factory=dict)
    invoices: dict[int, Invoice] = field(default_factory=dict)
    barcodes: dict[str, int] = field(default_factory=dict)
    stock_updates: int = 0

    def add_warehouses(self, count: int) -> None:
        """Create ``count`` warehouses: 1 "Main", 2 "Warehouse 2", ..."""
        for i in range(1, count + 1):
            self.warehouses[i] = Warehouse(i, "Main" if i == 1 else f"Warehouse {i}")

    def add_product(self, product: Product) -> Product:
        """Store ``product`` (its id must be new) and index its barcode."""
        self.products[product.id] = product
        if product.barcode:
            self.barcodes[product.barcode] = product.id
        return product

    def next_id(self, table: dict[int, Any]) -> int:
        """The id the next record of ``table`` gets (max + 1, like AUTO_INCREMENT without deletes)."""
        return max(table, default=0) + 1

    def stock_total(self, product: Product) -> int:
        """The product's quantity summed over all warehouses (the ``stock`` field)."""
        return sum(product.stock)

    # seeding -------------------------------------------------------------------------------------

    def seed_synthetic_products(self, count: int, rng: random.Random) -> None:
        """Add ``count`` generated products (cafe items first), with stock in every warehouse."""
        n_wh = len(self.warehouses)
        rate = self.default_tax_rate
        randint = rng.randint
        start = self.next_id(self.products)
        for pid in range(start, start + count):
            k = pid - 1
            if k < len(CAFE):
                name, name_ar, price_s, cost_s = CAFE[k]
                price, cost = Decimal(price_s), Decimal(cost_s)
            else:
                cents = randint(50, 20000)
                name = f"Product {pid}"
                name_ar = f"منتج {pid}" if pid % 3 == 0 else None
                price = Decimal(cents).scaleb(-2)
                cost = Decimal(cents * 2 // 5).scaleb(-2)
            stock = [randint(0, 200) for _ in range(n_wh)]
            barcode = "8901234567890" if pid == 1 else _ean13(pid)
            category = 2 if pid == 1 else randint(1, 8)
            if pid == 1 and n_wh >= 2:
                stock[0], stock[1] = 84, 16  # the doc's Espresso: stock 100, 84 of them in Main
            product = Product(pid, name, name_ar, price, cost, barcode, category, rate, stock)
            self.products[pid] = product
            self.barcodes[barcode] = pid

    def seed_synthetic_customers(self, count: int, rng: random.Random) -> None:
        """Add ``count`` generated customers; id 5 is the doc's "Ahmed Al-Amin"."""
        start = self.next_id(self.customers)
        for cid in range(start, start + count):
            if cid == 5:
                self.customers[cid] = Customer(cid, "Ahmed Al-Amin", "+966501234567", "ahmed@example.com")
                continue
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            phone = f"+9665{rng.randint(0, 99_999_999):08d}"
            email = f"{first.lower()}.{last.lower().replace('-', '')}{cid}@example.com"
            self.customers[cid] = Customer(cid, f"{first} {last}", phone, email)

    def seed_synthetic_invoices(self, count: int, rng: random.Random, start: datetime) -> None:
        """Add ``count`` generated invoices dated from ``start`` on, one every ~6 hours (stock untouched)."""
        if not self.products or count <= 0:
            return
        product_ids = list(self.products)[:50]
        customer_ids = list(self.customers)
        moment = start
        for _ in range(count):
            iid = self.next_id(self.invoices)
            moment += timedelta(minutes=rng.randint(60, 720))
            items = [
                make_item(p, rng.randint(1, 3), p.price)
                for p in (
                    self.products[pid] for pid in rng.sample(product_ids, min(len(product_ids), rng.randint(1, 3)))
                )
            ]
            status = rng.choice(["paid", "paid", "paid", "partial", "unpaid"])
            invoice = Invoice(
                iid,
                f"INV-{iid:06d}",
                rng.choice(customer_ids) if customer_ids and rng.random() < 0.6 else None,
                rng.choice(list(self.warehouses)),
                moment,
                items,
                status,
                None if status == "unpaid" else rng.choice(PAYMENT_METHODS),
            )
            invoice.paid = (
                invoice.total
                if status == "paid"
                else (invoice.total / 2).quantize(CENT)
                if status == "partial"
                else ZERO
            )
            self.invoices[iid] = invoice

    def seed_retail(self, rows: Iterable[RetailRow], rng: random.Random, max_products: int | None) -> None:
        """Load products, customers, stock and invoices from UCI Online Retail rows (see SANDBOX.md)."""
        rows = list(rows)
        names: dict[str, Counter[str]] = {}
        prices: dict[str, Counter[Decimal]] = {}
        countries: dict[int, str] = {}
        for row in rows:
            names.setdefault(row.stock_code, Counter())
            prices.setdefault(row.stock_code, Counter())
            if row.description:
                names[row.stock_code][" ".join(row.description.split())] += 1
            if row.unit_price > 0:
                prices[row.stock_code][row.unit_price] += 1
            if row.customer_id is not None:
                countries.setdefault(row.customer_id, row.country)
        n_wh = len(self.warehouses)
        by_code: dict[str, Product] = {}
        for code in names:
            if max_products is not None and len(by_code) >= max_products:
                break
            pid = self.next_id(self.products)
            name = min(names[code].items(), key=lambda kv: (-kv[1], kv[0]))[0] if names[code] else code
            price = min(prices[code].items(), key=lambda kv: (-kv[1], kv[0]))[0] if prices[code] else ZERO
            price = money(price)
            cost = money(price * Decimal("0.6"))
            name_ar = f"منتج {code}" if pid % 3 == 0 else None
            stock = [rng.randint(0, 200) for _ in range(n_wh)]
            category = 1 + zlib.crc32(code.encode()) % 8
            by_code[code] = self.add_product(
                Product(pid, name, name_ar, price, cost, code, category, self.default_tax_rate, stock)
            )
        for cid in sorted(countries):
            self.customers[cid] = Customer(cid, f"Customer {cid}", None, f"customer{cid}@example.com", countries[cid])
        invoices: dict[str, list[RetailRow]] = {}
        for row in rows:
            if row.stock_code in by_code:
                invoices.setdefault(row.invoice_no, []).append(row)
        ordered = sorted(invoices.items(), key=lambda kv: (min(r.invoice_date for r in kv[1]), kv[1][0].line))
        second = 2 if n_wh >= 2 else 1
        for number, lines in ordered:
            iid = self.next_id(self.invoices)
            first = lines[0]
            items = [make_item(by_code[r.stock_code], r.quantity, r.unit_price) for r in lines]
            invoice = Invoice(
                iid,
                number,
                first.customer_id,
                1 if first.country == "United Kingdom" else second,
                min(r.invoice_date for r in lines),
                items,
                "paid",
                "card",
            )
            invoice.paid = invoice.total
            self.invoices[iid] = invoice


# --- JSON rendering ------------------------------------------------------------------------------


def render_product(store: ApexStore, p: Product) -> dict[str, Any]:
    """A product as ``GET /products`` lists it."""
    return {
        "id": p.id,
        "name": p.name,
        "name_ar": p.name_ar,
        "price": num(p.price),
        "cost": num(p.cost),
        "barcode": p.barcode,
        "category_id": p.category_id,
        "tax_rate": num(p.tax_rate),
        "stock": store.stock_total(p),
    }


def render_customer(c: Customer) -> dict[str, Any]:
    """A customer as ``GET /customers`` lists it (the doc's fields only)."""
    return {"id": c.id, "name": c.name, "phone": c.phone, "email": c.email, "balance": num(c.balance)}


def render_invoice(inv: Invoice) -> dict[str, Any]:
    """An invoice as ``GET /invoices`` lists it (shape chosen by the sandbox; see SANDBOX.md)."""
    total, tax = inv.total, inv.tax
    return {
        "id": inv.id,
        "invoice_number": inv.invoice_number,
        "customer_id": inv.customer_id,
        "warehouse_id": inv.warehouse_id,
        "date": _iso(inv.date),
        "items": [
            {
                "product_id": i.product_id,
                "product_name": i.product_name,
                "quantity": i.quantity,
                "price": num(i.price),
                "total": num(i.total),
            }
            for i in inv.items
        ],
        "subtotal": num(total - tax),
        "tax": num(tax),
        "total": num(total),
        "paid": num(inv.paid),
        "status": inv.status,
        "payment_method": inv.payment_method,
        "account_id": inv.account_id,
        "notes": inv.notes,
    }


def _dumps(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


class ApexJSON(JSONResponse):
    """JSON the way the vendor writes it (UTF-8, compact)."""

    def render(self, content: Any) -> bytes:
        """Compact UTF-8 JSON."""
        return _dumps(content)


def fail(status: int, message: str, errors: dict[str, list[str]] | None = None) -> Response:
    """The vendor's error envelope ``{"success": false, "message": ..., "errors"?: {field: [..]}}``."""
    body: dict[str, Any] = {"success": False, "message": message}
    if errors:
        body["errors"] = errors
    return ApexJSON(body, status_code=status)


class Invalid(Exception):
    """A request the vendor rejects: answered by :func:`fail` with its status and fields."""

    def __init__(self, status: int, message: str, errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors


class Errors:
    """Field errors collected Laravel-style: ``{"items.0.quantity": ["..."]}``."""

    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = {}

    def add(self, name: str, message: str) -> None:
        """Record one error for field ``name``."""
        self.fields.setdefault(name, []).append(message)

    def raise_if_any(self) -> None:
        """422 "The given data was invalid." when any error was recorded."""
        if self.fields:
            first = next(iter(self.fields.values()))[0]
            raise Invalid(422, first, self.fields)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (
        (isinstance(v, int | float) and not isinstance(v, bool)) and v == v and v not in (float("inf"), float("-inf"))
    )


def _check(
    body: dict[str, Any],
    errs: Errors,
    name: str,
    kind: str,
    *,
    required: bool = False,
    nullable: bool = False,
    minimum: float | None = None,
    maximum: float | None = None,
    max_length: int | None = None,
) -> Any:
    """Validate one body field; returns the value (Decimal for ``number``) or None when absent/invalid."""
    if name not in body:
        if required:
            errs.add(name, f"The {name} field is required.")
        return None
    value = body[name]
    if value is None:
        if required or not nullable:
            errs.add(name, f"The {name} field is required." if required else f"The {name} may not be null.")
        return None
    if kind == "string":
        if not isinstance(value, str) or (required and not value.strip()):
            errs.add(
                name,
                f"The {name} must be a string." if not isinstance(value, str) else f"The {name} field is required.",
            )
            return None
        if max_length is not None and len(value) > max_length:
            errs.add(name, f"The {name} may not be greater than {max_length} characters.")
            return None
        return value
    if kind == "integer":
        if not _is_int(value):
            errs.add(name, f"The {name} must be an integer.")
            return None
        maximum = INT_MAX if maximum is None else maximum
        minimum = -INT_MAX - 1 if minimum is None else minimum
    elif kind == "number":
        if not _is_number(value):
            errs.add(name, f"The {name} must be a number.")
            return None
        maximum = NUMBER_MAX if maximum is None else maximum
        minimum = -NUMBER_MAX if minimum is None else minimum
    if minimum is not None and value < minimum:
        errs.add(name, f"The {name} must be at least {minimum:g}.")
        return None
    if maximum is not None and value > maximum:
        errs.add(name, f"The {name} may not be greater than {maximum:g}.")
        return None
    return money(value) if kind == "number" else value


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Invalid(400, "Invalid JSON body") from exc
    if not isinstance(body, dict):
        raise Invalid(400, "Request body must be a JSON object")
    return body


def _page_params(request: Request) -> tuple[int, int]:
    """``page`` and ``limit`` read leniently like a PHP backend: junk or < 1 means the default; limit > 100 means 100."""

    def lenient(name: str, default: int) -> int:
        try:
            value = int(request.query_params.get(name, ""))
        except ValueError:
            return default
        return value if value >= 1 else default

    return lenient("page", 1), min(lenient("limit", DEFAULT_LIMIT), MAX_LIMIT)


def _int_filter(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise Invalid(422, f"The {name} must be an integer.", {name: [f"The {name} must be an integer."]}) from exc


def _date_filter(request: Request, name: str) -> date | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return datetime.strptime(raw, "%Y-%m-%d").date()
    except ValueError as exc:
        msg = f"The {name} does not match the format Y-m-d."
        raise Invalid(422, msg, {name: [msg]}) from exc


# --- the app -------------------------------------------------------------------------------------


class ApexAuth:
    """ASGI middleware: ``X-API-Key`` must be one of the configured keys (else 401); skips ``/_sandbox``."""

    def __init__(self, app: ASGIApp, api_keys: frozenset[str]) -> None:
        self.app = app
        self.api_keys = api_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 401 ``{"success": false, "message": ...}`` without a valid key."""
        if scope["type"] != "http" or is_admin_path(scope):
            await self.app(scope, receive, send)
            return
        key = None
        for name, value in scope.get("headers", []):
            if name == b"x-api-key":
                key = value.decode("latin-1").strip()
                break
        if not key:
            await fail(401, "API key is required")(scope, receive, send)
            return
        if key not in self.api_keys:
            await fail(401, "Invalid API key")(scope, receive, send)
            return
        await self.app(scope, receive, send)


class ApexSandbox:
    """The route handlers over one :class:`ApexStore` and its :class:`~gateway.testing.sandbox.Sandbox`."""

    def __init__(self, store: ApexStore, sandbox: Sandbox) -> None:
        self.store = store
        self.sandbox = sandbox

    def routes(self) -> list[Route]:
        """Every endpoint of the doc, under ``/rest_api/v1`` (one route per path, so 405 lists every method)."""
        b = BASE_PATH
        table = {
            f"{b}/products": {"GET": self.list_products, "POST": self.create_product},
            f"{b}/products/{{product_id:int}}": {"PUT": self.update_product},
            f"{b}/inventory": {"GET": self.list_inventory},
            f"{b}/inventory/{{product_id:int}}": {"PATCH": self.set_stock},
            f"{b}/invoices": {"GET": self.list_invoices, "POST": self.create_invoice},
            f"{b}/customers": {"GET": self.list_customers, "POST": self.create_customer},
            f"{b}/health": {"GET": self.health},
        }
        return [Route(path, _dispatch(handlers), methods=list(handlers)) for path, handlers in table.items()]

    @staticmethod
    def _list(page_: Any) -> Response:
        return ApexJSON(
            {"success": True, "data": page_.items, "total": page_.total, "page": page_.page, "limit": page_.limit}
        )

    # products ------------------------------------------------------------------------------------

    async def list_products(self, request: Request) -> Response:
        """``GET /products?page&limit&category_id`` -> ``{success, data, total, page, limit}``."""
        try:
            category = _int_filter(request, "category_id")
        except Invalid as exc:
            return fail(exc.status, exc.message, exc.errors)
        page, limit = _page_params(request)
        products: list[Product] = list(self.store.products.values())
        if category is not None:
            products = [p for p in products if p.category_id == category]
        pg = paginate(products, page, limit, self.sandbox)
        pg.items = [render_product(self.store, p) for p in pg.items]
        return self._list(pg)

    def _product_fields(self, body: dict[str, Any], errs: Errors, *, create: bool) -> dict[str, Any]:
        fields = {
            "name": _check(body, errs, "name", "string", required=create, max_length=255),
            "name_ar": _check(body, errs, "name_ar", "string", nullable=True, max_length=255),
            "price": _check(body, errs, "price", "number", required=create, minimum=0),
            "cost": _check(body, errs, "cost", "number", nullable=True, minimum=0),
            "barcode": _check(body, errs, "barcode", "string", nullable=True, max_length=64),
            "category_id": _check(body, errs, "category_id", "integer", nullable=True, minimum=1),
            "tax_rate": _check(body, errs, "tax_rate", "number", minimum=0, maximum=100),
        }
        return {k: v for k, v in fields.items() if k in body}

    async def create_product(self, request: Request) -> Response:
        """``POST /products`` -> 201 ``{success, product_id, message}``; ``stock`` goes to warehouse 1."""
        try:
            body = await _json_body(request)
            errs = Errors()
            fields = self._product_fields(body, errs, create=True)
            stock = _check(body, errs, "stock", "integer", minimum=0)
            barcode = fields.get("barcode")
            if barcode and barcode in self.store.barcodes:
                errs.add("barcode", "The barcode has already been taken.")
            errs.raise_if_any()
        except Invalid as exc:
            return fail(exc.status, exc.message, exc.errors)
        store = self.store
        pid = store.next_id(store.products)
        quantities = [0] * len(store.warehouses)
        quantities[0] = stock or 0
        store.add_product(
            Product(
                pid,
                fields["name"],
                fields.get("name_ar"),
                fields["price"],
                fields.get("cost") or ZERO,
                barcode or None,
                fields.get("category_id"),
                fields["tax_rate"] if fields.get("tax_rate") is not None else store.default_tax_rate,
                quantities,
            )
        )
        return ApexJSON({"success": True, "product_id": pid, "message": "Product created"}, status_code=201)

    async def update_product(self, request: Request) -> Response:
        """``PUT /products/{id}`` (any subset of the create fields but ``stock``) -> ``{success, message}``."""
        product = self.store.products.get(request.path_params["product_id"])
        if product is None:
            return fail(404, "Product not found")
        try:
            body = await _json_body(request)
            errs = Errors()
            fields = self._product_fields(body, errs, create=False)
            if isinstance(body.get("name"), str) and not body["name"].strip():
                errs.add("name", "The name field is required.")
            if "stock" in body:
                errs.add("stock", "The stock cannot be changed here; use PATCH /inventory/{id}.")
            barcode = fields.get("barcode")
            if barcode and self.store.barcodes.get(barcode, product.id) != product.id:
                errs.add("barcode", "The barcode has already been taken.")
            if not fields and not errs.fields:
                raise Invalid(422, "No fields to update")
            errs.raise_if_any()
        except Invalid as exc:
            return fail(exc.status, exc.message, exc.errors)
        if "barcode" in fields and product.barcode:
            self.store.barcodes.pop(product.barcode, None)
        for name, value in fields.items():
            if name == "cost" and value is None:
                value = ZERO
            if name == "barcode":
                value = value or None
                if value:
                    self.store.barcodes[value] = product.id
            setattr(product, name, value)
        return ApexJSON({"success": True, "message": "Product updated"})

    # inventory -----------------------------------------------------------------------------------

    async def list_inventory(self, request: Request) -> Response:
        """``GET /inventory?warehouse_id`` -> ``{success, data}``: one row per (product, warehouse), unpaginated."""
        try:
            warehouse_id = _int_filter(request, "warehouse_id")
        except Invalid as exc:
            return fail(exc.status, exc.message, exc.errors)
        store = self.store
        warehouses = [w for w in store.warehouses.values() if warehouse_id is None or w.id == warehouse_id]
        data = [
            {
                "product_id": p.id,
                "product_name": p.name,
                "warehouse_id": w.id,
                "warehouse_name": w.name,
                "quantity": p.stock[w.id - 1],
            }
            for p in store.products.values()
            for w in warehouses
        ]
        return ApexJSON({"success": True, "data": data})

    async def set_stock(self, request: Request) -> Response:
        """``PATCH /inventory/{product_id}`` ``{product_id, warehouse_id, quantity, notes?}``: set an absolute quantity."""
        path_id = request.path_params["product_id"]
        product = self.store.products.get(path_id)
        if product is None:
            return fail(404, "Product not found")
        try:
            body = await _json_body(request)
            errs = Errors()
            body_pid = _check(body, errs, "product_id", "integer", required=True)
            warehouse_id = _check(body, errs, "warehouse_id", "integer", required=True)
            quantity = _check(body, errs, "quantity", "integer", required=True, minimum=0)
            _check(body, errs, "notes", "string", nullable=True, max_length=1000)
            if body_pid is not None and body_pid != path_id:
                errs.add("product_id", "The product_id does not match the product in the URL.")
            if warehouse_id is not None and warehouse_id not in self.store.warehouses:
                errs.add("warehouse_id", "The selected warehouse_id is invalid.")
            errs.raise_if_any()
        except Invalid as exc:
            return fail(exc.status, exc.message, exc.errors)
        product.stock[warehouse_id - 1] = quantity
        self.store.stock_updates += 1
        return ApexJSON({"success": True, "message": "Stock updated", "new_quantity": quantity})

    # invoices ------------------------------------------------------------------------------------

    async def list_invoices(self, request: Request) -> Response:
        """``GET /invoices?status&date_from&date_to&page&limit`` -> ``{success, data, total, page, limit}``."""
        try:
            status = request.query_params.get("status") or None
            if status is not None and status not in INVOICE_STATUSES:
                msg = "The selected status is invalid."
                raise Invalid(422, msg, {"status": [msg]})
            date_from = _date_filter(request, "date_from")
            date_to = _date_filter(request, "date_to")
        except Invalid as exc:
            return fail(exc.status, exc.message, exc.errors)
        page, limit = _page_params(request)
        invoices = [
            inv
            for inv in self.store.invoices.values()
            if (status is None or inv.status == status)
            and (date_from is None or inv.date.date() >= date_from)
            and (date_to is None or inv.date.date() <= date_to)
        ]
        pg = paginate(invoices, page, limit, self.sandbox)
        pg.items = [render_invoice(i) for i in pg.items]
        return self._list(pg)

    async def create_invoice(self, request: Request) -> Response:
        """``POST /invoices`` -> 201 ``{success, invoice_id, total, status}``; takes stock out of the warehouse."""
        store = self.store
        try:
            body = await _json_body(request)
            errs = Errors()
            customer_id = _check(body, errs, "customer_id", "integer", nullable=True)
            payment_method = _check(body, errs, "payment_method", "string", nullable=True)
            account_id = _check(body, errs, "account_id", "integer", nullable=True)
            notes = _check(body, errs, "notes", "string", nullable=True, max_length=1000)
            warehouse_id = _check(body, errs, "warehouse_id", "integer", nullable=True)
            if customer_id is not None and customer_id not in store.customers:
                errs.add("customer_id", "The selected customer_id is invalid.")
            if payment_method is not None and payment_method not in PAYMENT_METHODS:
                errs.add("payment_method", "The selected payment_method is invalid.")
            warehouse_id = warehouse_id if warehouse_id is not None else 1
            if warehouse_id not in store.warehouses:
                errs.add("warehouse_id", "The selected warehouse_id is invalid.")
            items = body.get("items")
            lines: list[tuple[Product, int, Decimal]] = []
            if "items" not in body or items is None:
                errs.add("items", "The items field is required.")
            elif not isinstance(items, list) or not items:
                errs.add("items", "The items must be a non-empty array.")
            else:
                for n, item in enumerate(items):
                    prefix = f"items.{n}"
                    if not isinstance(item, dict):
                        errs.add(prefix, f"The {prefix} must be an object.")
                        continue
                    sub = Errors()
                    pid = _check(item, sub, "product_id", "integer", required=True)
                    qty = _check(item, sub, "quantity", "integer", required=True, minimum=1)
                    price = _check(item, sub, "price", "number", nullable=True, minimum=0)
                    product = store.products.get(pid) if pid is not None else None
                    if pid is not None and product is None:
                        sub.add("product_id", "The selected product_id is invalid.")
                    for name, messages in sub.fields.items():
                        for message in messages:
                            errs.add(f"{prefix}.{name}", message.replace(f"The {name}", f"The {prefix}.{name}"))
                    if product is not None and qty is not None and not sub.fields:
                        lines.append((product, qty, price if price is not None else product.price))
            if not errs.fields and not store.allow_negative_stock:
                wanted: Counter[int] = Counter()
                for product, qty, _ in lines:
                    wanted[product.id] += qty
                for n, (product, _, _) in enumerate(lines):
                    have = product.stock[warehouse_id - 1]
                    if wanted[product.id] > have:
                        errs.add(
                            f"items.{n}.quantity", f"Insufficient stock for product {product.id}: {have} available."
                        )
            errs.raise_if_any()
        except Invalid as exc:
            return fail(exc.status, exc.message, exc.errors)
        for product, qty, _ in lines:
            product.stock[warehouse_id - 1] -= qty
        iid = store.next_id(store.invoices)
        invoice = Invoice(
            iid,
            f"INV-{iid:06d}",
            customer_id,
            warehouse_id,
            datetime.now(UTC).replace(microsecond=0),
            [make_item(p, q, price) for p, q, price in lines],
            "paid" if payment_method else "unpaid",
            payment_method,
            account_id,
            notes,
        )
        if payment_method:
            invoice.paid = invoice.total
        elif customer_id is not None:
            store.customers[customer_id].balance += invoice.total
        store.invoices[iid] = invoice
        return ApexJSON(
            {"success": True, "invoice_id": iid, "total": num(invoice.total), "status": invoice.status}, status_code=201
        )

    # customers -----------------------------------------------------------------------------------

    async def list_customers(self, request: Request) -> Response:
        """``GET /customers?search&page&limit`` -> ``{success, data, total, page, limit}``; search is a
        case-insensitive substring of name, phone or email."""
        page, limit = _page_params(request)
        term = (request.query_params.get("search") or "").strip().lower()
        customers = list(self.store.customers.values())
        if term:
            customers = [c for c in customers if any(term in (v or "").lower() for v in (c.name, c.phone, c.email))]
        pg = paginate(customers, page, limit, self.sandbox)
        pg.items = [render_customer(c) for c in pg.items]
        return self._list(pg)

    async def create_customer(self, request: Request) -> Response:
        """``POST /customers`` ``{name, phone?, email?, address?, credit_limit?}`` -> 201 ``{success, customer_id, message}``."""
        try:
            body = await _json_body(request)
            errs = Errors()
            name = _check(body, errs, "name", "string", required=True, max_length=255)
            phone = _check(body, errs, "phone", "string", nullable=True, max_length=32)
            email = _check(body, errs, "email", "string", nullable=True, max_length=255)
            address = _check(body, errs, "address", "string", nullable=True, max_length=1000)
            credit_limit = _check(body, errs, "credit_limit", "number", nullable=True, minimum=0)
            if email and ("@" not in email or email.startswith("@") or email.endswith("@")):
                errs.add("email", "The email must be a valid email address.")
            errs.raise_if_any()
        except Invalid as exc:
            return fail(exc.status, exc.message, exc.errors)
        cid = self.store.next_id(self.store.customers)
        self.store.customers[cid] = Customer(cid, name, phone or None, email or None, address, credit_limit)
        return ApexJSON({"success": True, "customer_id": cid, "message": "Customer created"}, status_code=201)

    # health --------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """``GET /health`` -> ``{status: "ok", business, timestamp}`` (exempt from the 429 knob)."""
        return ApexJSON({"status": "ok", "business": self.store.business, "timestamp": _iso(datetime.now(UTC))})


def _dispatch(handlers: dict[str, Any]) -> Any:
    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return fail(404, "Endpoint not found")
    if exc.status_code == 405:
        response = fail(405, "Method not allowed")
        if exc.headers:
            response.headers.update(exc.headers)
        return response
    return fail(exc.status_code, exc.detail)


def _sandbox_error(status: int, message: str) -> Response:
    return fail(status, message)


def create_app(
    *,
    seed_csv: str | Path | None = None,
    products: int | None = None,
    customers: int | None = None,
    invoices: int | None = None,
    warehouses: int = 2,
    api_keys: Iterable[str] = DEFAULT_API_KEYS,
    business: str = "My Store",
    seed: int = 0,
    faults: Faults | dict[str, Any] | None = None,
    default_tax_rate: float | int | str = 15,
    allow_negative_stock: bool = False,
) -> Starlette:
    """Build an Apex POS sandbox app (``tillgate sandbox apex``).

    Options:

    - ``seed_csv``: a UCI Online Retail CSV; loads one product per StockCode (``barcode`` =
      StockCode), one customer per CustomerID (id = CustomerID), every invoice, random stock per
      warehouse. With ``products`` set, only the first N StockCodes (file order) are loaded, and
      invoice lines of the others are dropped.
    - ``products``: without a CSV, generate N products (default 84, the doc's ``total``), cafe
      items first; 100 000 take well under 5 s.
    - ``customers``: without a CSV, generate N customers (default 30; id 5 is the doc's "Ahmed Al-Amin").
    - ``invoices``: without a CSV, generate N invoices dated from 2026-01-01 (default 20).
    - ``warehouses``: how many (default 2; id 1 is "Main"); at least 1.
    - ``api_keys``: the valid ``X-API-Key`` values (each must start with ``apx_``; default ``apx_sandbox_key``).
    - ``business``: the name ``/health`` reports (default "My Store").
    - ``seed``: RNG seed for generated data and the fault knobs.
    - ``faults``: initial fault knobs (:class:`~gateway.testing.sandbox.Faults` or a dict).
    - ``default_tax_rate``: percent for products created without ``tax_rate`` (default 15).
    - ``allow_negative_stock``: let invoices sell more than is in stock (default False: 422).

    ``app.state.apex`` is the :class:`ApexStore`, ``app.state.sandbox`` the fault state.
    ``ValueError`` for a key without the ``apx_`` prefix or fewer than one warehouse.
    """
    keys = frozenset(api_keys)
    if not keys or any(not k.startswith("apx_") for k in keys):
        raise ValueError("Apex API keys start with 'apx_'")
    if warehouses < 1:
        raise ValueError("at least one warehouse")
    rng = random.Random(seed)
    store = ApexStore(
        business=business, default_tax_rate=money(default_tax_rate), allow_negative_stock=allow_negative_stock
    )
    store.add_warehouses(warehouses)
    if seed_csv is not None:
        store.seed_retail(read_retail_csv(seed_csv), rng, products)
    else:
        store.seed_synthetic_products(84 if products is None else products, rng)
        store.seed_synthetic_customers(30 if customers is None else customers, rng)
        store.seed_synthetic_invoices(20 if invoices is None else invoices, rng, datetime(2026, 1, 1, tzinfo=UTC))

    sandbox = Sandbox(
        seed=seed,
        faults=faults,
        error_response=_sandbox_error,
        rate_limit_exempt={f"{BASE_PATH}/health"},
        state_extra=lambda: {
            "apex": {
                "products": len(store.products),
                "customers": len(store.customers),
                "invoices": len(store.invoices),
                "warehouses": len(store.warehouses),
                "stock_updates": store.stock_updates,
            }
        },
    )
    handlers = ApexSandbox(store, sandbox)
    app = sandbox.build_app(
        handlers.routes(),
        middleware=[Middleware(ApexAuth, api_keys=keys)],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.apex = store
    return app
