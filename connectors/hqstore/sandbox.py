"""An in-memory HQ/Store POS (HQ server): the fake vendor the HQStore connector is built against.

It follows ``vendor-docs/hqstore-pos-api.txt``: REST under ``/api/v1``, the ``{success, data,
error}`` envelope, ``total``/``page``/``pageSize`` on paginated lists, login with username + PIN
for a JWT access token and a refresh token, money in integer minor units, quantities in integer
thousandths, tax rates in integer basis points, compound taxes in tax groups. Every choice made
where the doc is silent is listed in ``connectors/hqstore/SANDBOX.md``; the fault knobs and the
``/_sandbox`` admin routes come from :mod:`gateway.testing.sandbox`.

Routes (all need ``Authorization: Bearer <access JWT>`` unless said otherwise):

``POST /api/v1/auth/login`` (no auth), ``POST /api/v1/auth/pin-login`` (no auth),
``POST /api/v1/auth/refresh`` (no auth), ``GET /api/v1/auth/me``;
``GET /api/v1/stores``, ``GET /api/v1/stores/current``; ``GET /api/v1/departments``;
``GET /api/v1/taxes``, ``GET /api/v1/taxes/groups``, ``GET /api/v1/taxes/groups/{id}``;
``GET|POST /api/v1/products``, ``GET|PUT|DELETE /api/v1/products/{id}``,
``GET /api/v1/products/barcode/{barcode}``; ``GET|POST /api/v1/customers``,
``GET|PUT|DELETE /api/v1/customers/{id}``; ``GET|POST /api/v1/sales``, ``PUT /api/v1/sales/{id}/void``;
``GET /api/v1/inventory``, ``POST /api/v1/inventory/adjustments``; ``GET /api/v1/transfers``,
``GET /api/v1/transfers/{id}``; ``GET /api/v1/sync/pull``, ``GET /api/v1/sync/status``
(sync token in ``X-Sync-Token``, no JWT); ``GET /health`` (no auth).

Sandbox-only admin routes (no auth, never faulted): ``POST /_sandbox/tokens/revoke`` (every
access token issued so far answers 401 from now on) and ``POST /_sandbox/clock`` (``{"advance":
seconds}`` moves the store's clock forward, so tokens expire without waiting).

Use :func:`create_app` (``tillgate sandbox hqstore``); its options are documented there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP
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

API = "/api/v1"
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
#: access-token lifetime in seconds (the doc gives none; 15 minutes is the common choice)
DEFAULT_TOKEN_TTL = 900
#: refresh-token lifetime in seconds (7 days)
DEFAULT_REFRESH_TTL = 7 * 24 * 3600
DEFAULT_USERS = {"admin": "1234"}
DEFAULT_SYNC_TOKENS = ("hqs_sync_sandbox",)
PAYMENT_METHODS = ("CASH", "CARD", "MOBILE", "BANK_TRANSFER", "ACCOUNT", "VOUCHER", "OTHER")
ADJUSTMENT_REASONS = ("SALE", "RETURN", "RECEIVED", "CORRECTION", "TRANSFER", "COUNT", "DAMAGE", "OTHER")
PERMISSIONS = (
    "products.view", "products.create", "products.edit", "products.delete", "taxes.view", "taxes.manage",
    "stores.view", "pos.sell", "pos.void", "inventory.view", "inventory.adjust", "transfers.view",
    "customers.view", "customers.create", "customers.edit", "users.view",
)
SEED_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
INT_MAX = 2**53 - 1  # what a JavaScript backend can hold exactly


def rfc3339(moment: datetime) -> str:
    """``2026-01-01T09:00:00.000Z`` (milliseconds, UTC), how a Node backend writes dates."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def round_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half up (both non-negative integers)."""
    return (2 * numerator + denominator) // (2 * denominator)


def line_net(quantity: int, unit_price: int) -> int:
    """Minor units of ``quantity`` thousandths at ``unit_price`` minor units each, rounded half up."""
    return round_half_up(quantity * unit_price, 1000)


def tax_amounts(taxable: int, rates: list[TaxRate]) -> list[int]:
    """Minor units of each tax on ``taxable`` minor units, in ``sortOrder``: a simple tax is
    ``taxable x rate / 10000``, a compound one is on ``taxable`` plus the taxes before it; each
    rounded half up on its own."""
    amounts: list[int] = []
    for rate in rates:
        base = taxable + (sum(amounts) if rate.is_compound else 0)
        amounts.append(round_half_up(base * rate.rate, 10000))
    return amounts


class ApiError(Exception):
    """An error answer: ``{"success": false, "error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- records -------------------------------------------------------------------------------------


@dataclass(slots=True)
class Store:
    """A store (a unified location): ``timezone`` is an IANA name."""

    id: str
    code: str
    name: str
    address: str | None
    timezone: str
    is_active: bool
    created_at: datetime
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "code": self.code, "name": self.name, "address": self.address,
                "timezone": self.timezone, "isActive": self.is_active, "createdAt": rfc3339(self.created_at),
                "updatedAt": rfc3339(self.updated_at)}


@dataclass(slots=True)
class Department:
    """A department (a unified category); ``parent_id`` nests it."""

    id: str
    name: str
    parent_id: str | None
    created_at: datetime
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "description": None, "parentId": self.parent_id,
                "createdAt": rfc3339(self.created_at), "updatedAt": rfc3339(self.updated_at)}


@dataclass(slots=True)
class TaxRate:
    """``rate`` in basis points (825 is 8.25 %)."""

    id: str
    name: str
    rate: int
    is_compound: bool
    sort_order: int

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "rate": self.rate, "isCompound": self.is_compound,
                "sortOrder": self.sort_order, "isActive": True}


@dataclass(slots=True)
class TaxGroup:
    """A named set of tax rates a product points to (``taxGroupId``)."""

    id: str
    name: str
    rates: list[TaxRate]

    def as_json(self) -> dict[str, Any]:
        ordered = sorted(self.rates, key=lambda r: (r.sort_order, r.id))
        return {"id": self.id, "name": self.name, "taxRates": [r.as_json() for r in ordered]}


@dataclass(slots=True)
class Product:
    """Prices in minor units."""

    id: str
    sku: str
    barcode: str | None
    name: str
    description: str | None
    department_id: str | None
    cost_price: int
    sell_price: int
    tax_group_id: str | None
    track_stock: bool
    is_active: bool
    created_at: datetime
    updated_at: datetime

    def as_json(self, groups: dict[str, TaxGroup] | None = None) -> dict[str, Any]:
        out = {"id": self.id, "sku": self.sku, "barcode": self.barcode, "name": self.name,
               "description": self.description, "departmentId": self.department_id, "costPrice": self.cost_price,
               "sellPrice": self.sell_price, "taxGroupId": self.tax_group_id, "trackStock": self.track_stock,
               "isActive": self.is_active, "createdAt": rfc3339(self.created_at), "updatedAt": rfc3339(self.updated_at)}
        if groups is not None:  # GET /products/:id "with tax rates"
            group = groups.get(self.tax_group_id or "")
            out["taxRates"] = group.as_json()["taxRates"] if group else []
        return out


@dataclass(slots=True)
class Customer:
    """``balance``/``credit_limit`` in minor units."""

    id: str
    name: str
    email: str | None
    phone: str | None
    address: str | None
    loyalty_points: int
    balance: int
    credit_limit: int | None
    created_at: datetime
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "email": self.email, "phone": self.phone, "address": self.address,
                "loyaltyPoints": self.loyalty_points, "balance": self.balance, "creditLimit": self.credit_limit,
                "isActive": True, "createdAt": rfc3339(self.created_at), "updatedAt": rfc3339(self.updated_at)}


@dataclass(slots=True)
class Sale:
    """Money in minor units, item quantities in thousandths, rates in basis points (as sent)."""

    id: str
    receipt_number: str
    store_id: str
    cashier_id: str
    terminal_id: str | None
    customer_id: str | None
    sales_rep_id: str | None
    subtotal: int
    tax_total: int
    discount_total: int
    grand_total: int
    change_due: int
    items: list[dict[str, Any]]
    payments: list[dict[str, Any]]
    status: str
    created_at: datetime
    updated_at: datetime
    voided_at: datetime | None = None
    void_reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "receiptNumber": self.receipt_number, "storeId": self.store_id,
                "cashierId": self.cashier_id, "terminalId": self.terminal_id, "customerId": self.customer_id,
                "salesRepId": self.sales_rep_id, "subtotal": self.subtotal, "taxTotal": self.tax_total,
                "discountTotal": self.discount_total, "grandTotal": self.grand_total, "changeDue": self.change_due,
                "status": self.status, "items": self.items, "payments": self.payments,
                "voidedAt": rfc3339(self.voided_at) if self.voided_at else None, "voidReason": self.void_reason,
                "createdAt": rfc3339(self.created_at), "updatedAt": rfc3339(self.updated_at)}


@dataclass(slots=True)
class Level:
    """Quantities in thousandths."""

    id: str
    store_id: str
    product_id: str
    quantity: int
    reorder_level: int
    updated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "storeId": self.store_id, "productId": self.product_id, "quantity": self.quantity,
                "reorderLevel": self.reorder_level, "updatedAt": rfc3339(self.updated_at)}


@dataclass(slots=True)
class Transfer:
    """Item quantities in thousandths."""

    id: str
    number: str
    from_store_id: str
    to_store_id: str
    status: str
    items: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None = None
    received_at: datetime | None = None

    def as_json(self, *, items: bool) -> dict[str, Any]:
        out = {"id": self.id, "transferNumber": self.number, "fromStoreId": self.from_store_id,
               "toStoreId": self.to_store_id, "status": self.status, "notes": None,
               "sentAt": rfc3339(self.sent_at) if self.sent_at else None,
               "receivedAt": rfc3339(self.received_at) if self.received_at else None,
               "createdAt": rfc3339(self.created_at), "updatedAt": rfc3339(self.updated_at)}
        if items:
            out["items"] = self.items
        return out


@dataclass(slots=True)
class User:
    """An HQ/Store user: ``pin`` logs in; ``permissions`` gate the routes."""

    id: str
    username: str
    pin: str
    display_name: str
    permissions: tuple[str, ...]


# --- tokens --------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Tokens:
    """HS256 JWT access tokens (``sub``, ``username``, ``jti``, ``iat``, ``exp``) and opaque
    refresh tokens, against the store's clock (epoch seconds). Refresh tokens rotate: using one
    answers a new pair and retires it."""

    def __init__(self, clock: Callable[[], float], access_ttl: int, refresh_ttl: int) -> None:
        self.clock = clock
        self.access_ttl, self.refresh_ttl = access_ttl, refresh_ttl
        self._key = secrets.token_bytes(32)
        self.refresh: dict[str, tuple[str, float]] = {}  # token -> (user id, expires at)
        self.revoked_before = 0.0  # access tokens issued at or before this moment are refused
        self.issued = 0
        self.refreshed = 0

    def _sign(self, signing_input: bytes) -> str:
        return _b64(hmac.new(self._key, signing_input, hashlib.sha256).digest())

    def issue(self, user: User) -> dict[str, str]:
        """A new access JWT and refresh token for ``user``."""
        now = self.clock()
        self.issued += 1
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        claims = {"sub": user.id, "username": user.username, "jti": secrets.token_hex(8), "iat": now,
                  "exp": int(now) + self.access_ttl}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}".encode("ascii")
        refresh = secrets.token_urlsafe(32)
        self.refresh[refresh] = (user.id, now + self.refresh_ttl)
        return {"accessToken": f"{header}.{payload}.{self._sign(signing_input)}", "refreshToken": refresh}

    def verify(self, token: str) -> str:
        """The user id of a valid access token. Raises :class:`ApiError` 401 otherwise."""
        parts = token.split(".")
        if len(parts) != 3:
            raise ApiError(401, "Invalid token")
        expected = self._sign(f"{parts[0]}.{parts[1]}".encode("ascii"))
        if not hmac.compare_digest(expected, parts[2]):
            raise ApiError(401, "Invalid token")
        try:
            claims = json.loads(_unb64(parts[1]))
        except ValueError:
            raise ApiError(401, "Invalid token") from None
        if claims["iat"] <= self.revoked_before:
            raise ApiError(401, "Token revoked")
        if self.clock() >= claims["exp"]:
            raise ApiError(401, "Token expired")
        return str(claims["sub"])

    def use_refresh(self, token: str) -> str:
        """Retire a refresh token and return its user id. Raises :class:`ApiError` 401."""
        found = self.refresh.pop(token, None)
        if found is None:
            raise ApiError(401, "Invalid refresh token")
        user_id, expires = found
        if self.clock() >= expires:
            raise ApiError(401, "Refresh token expired")
        self.refreshed += 1
        return user_id

    def revoke_all(self) -> None:
        """Every access token issued so far answers 401 from now on."""
        self.revoked_before = self.clock()


# --- the store -----------------------------------------------------------------------------------


class HQStore:
    """The HQ server's data. ``clock`` is epoch seconds (``time.time`` unless replaced); every
    timestamp and token expiry is read from it."""

    def __init__(self, *, seed: int, access_ttl: int, refresh_ttl: int,
                 clock: Callable[[], float] | None = None) -> None:
        self.rng = random.Random(seed)
        self.offset = 0.0  # seconds added to the clock by POST /_sandbox/clock
        base = clock or time.time
        self.clock: Callable[[], float] = lambda: base() + self.offset
        self.tokens = Tokens(lambda: self.clock(), access_ttl, refresh_ttl)
        self.users: dict[str, User] = {}
        self.sync_tokens: dict[str, str] = {}  # token -> store id
        self.stores: dict[str, Store] = {}
        self.departments: dict[str, Department] = {}
        self.tax_rates: dict[str, TaxRate] = {}
        self.tax_groups: dict[str, TaxGroup] = {}
        self.products: dict[str, Product] = {}
        self.customers: dict[str, Customer] = {}
        self.sales: dict[str, Sale] = {}
        self.levels: dict[tuple[str, str], Level] = {}  # (product id, store id)
        self.transfers: dict[str, Transfer] = {}
        self.adjustments: list[dict[str, Any]] = []
        self.receipts = 0

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    # -- seeding ---------------------------------------------------------------------------------
    def add_user(self, username: str, pin: str, permissions: Iterable[str] = PERMISSIONS) -> User:
        user = User(self.new_id(), username, pin, username.title(), tuple(permissions))
        self.users[user.id] = user
        return user

    def seed_reference(self, stores: int) -> None:
        """Stores, departments (one nested), tax rates and three tax groups (one compound)."""
        at = SEED_EPOCH
        for n in range(1, stores + 1):
            store = Store(self.new_id(), f"S{n:02d}", "Main Street" if n == 1 else f"Store {n}",
                          f"{n} High Street", "America/Chicago", True, at, at)
            self.stores[store.id] = store
        names = ["Coffee", "Bakery", "Grocery", "Household"]
        for name in names:
            dept = Department(self.new_id(), name, None, at, at)
            self.departments[dept.id] = dept
        bakery = next(d for d in self.departments.values() if d.name == "Bakery")
        cakes = Department(self.new_id(), "Cakes", bakery.id, at, at)
        self.departments[cakes.id] = cakes
        state = TaxRate(self.new_id(), "State Tax", 825, False, 0)
        city = TaxRate(self.new_id(), "City Tax", 100, False, 1)
        luxury = TaxRate(self.new_id(), "Luxury Surcharge", 500, True, 2)
        for rate in (state, city, luxury):
            self.tax_rates[rate.id] = rate
        for name, rates in (("Standard", [state]), ("City", [state, city]), ("Luxury", [state, city, luxury])):
            group = TaxGroup(self.new_id(), name, rates)
            self.tax_groups[group.id] = group

    def _stock_everywhere(self, product: Product, at: datetime) -> None:
        for store in self.stores.values():
            self.levels[(product.id, store.id)] = Level(self.new_id(), store.id, product.id,
                                                        self.rng.randint(5, 60) * 1000, 5000, at)

    def seed_products(self, count: int) -> None:
        groups = list(self.tax_groups.values())
        depts = list(self.departments.values())
        for n in range(1, count + 1):
            at = SEED_EPOCH + timedelta(minutes=n)
            price = self.rng.randint(99, 4999)
            product = Product(self.new_id(), f"SKU-{n:05d}", f"400{n:010d}", f"Product {n}", None,
                              depts[n % len(depts)].id, price * 6 // 10, price,
                              groups[n % len(groups)].id if n % 5 else None, True, True, at, at)
            self.products[product.id] = product
            self._stock_everywhere(product, at)

    def seed_customers(self, count: int) -> None:
        for n in range(1, count + 1):
            at = SEED_EPOCH + timedelta(hours=1, minutes=n)
            customer = Customer(self.new_id(), f"Customer {n}", f"customer{n}@example.com", f"+1555010{n:04d}",
                                f"{n} Elm Street" if n % 2 else None, n * 10, 0, 50000 if n % 3 == 0 else None,
                                at, at)
            self.customers[customer.id] = customer

    def seed_sales(self, count: int) -> None:
        """Sales through :meth:`record_sale` (so stock moves as at the till), one per hour."""
        products = [p for p in self.products.values() if p.is_active]
        customers = list(self.customers.values())
        cashier = next(iter(self.users.values()))
        stores = list(self.stores.values())
        for n in range(count):
            at = SEED_EPOCH + timedelta(days=1, hours=n)
            picked = [products[(n * 3 + k) % len(products)] for k in range(1 + n % 3)] if products else []
            lines = [(p, (1 + (n + k) % 3) * 1000 if k else 1500, p.sell_price, 0) for k, p in enumerate(picked)]
            body = self.build_sale_body(stores[n % len(stores)].id, lines, "CASH" if n % 2 else "CARD",
                                        customers[n % len(customers)].id if customers and n % 2 else None)
            sale = self.record_sale(body, cashier, at=at)
            if n % 5 == 4:
                self.void_sale(sale, "Seeded void", at=at + timedelta(minutes=5))

    def seed_transfers(self) -> None:
        """One received and one sent transfer between the first two stores (when there are two)."""
        stores = list(self.stores.values())
        products = list(self.products.values())
        if len(stores) < 2 or len(products) < 2:
            return
        for n, status in enumerate(("RECEIVED", "SENT"), start=1):
            at = SEED_EPOCH + timedelta(days=2, hours=n)
            items = [{"productId": p.id, "productName": p.name, "quantity": 2000, "receivedQuantity":
                      2000 if status == "RECEIVED" else 0} for p in products[n - 1:n + 1]]
            transfer = Transfer(self.new_id(), f"TR-{n:04d}", stores[0].id, stores[1].id, status, items, at, at,
                                sent_at=at, received_at=at + timedelta(hours=4) if status == "RECEIVED" else None)
            self.transfers[transfer.id] = transfer

    def seed_retail(self, rows: Iterable[RetailRow], limit: int | None) -> None:
        """Products by StockCode (price in pence), customers by CustomerID, sales by invoice."""
        depts = list(self.departments.values())
        groups = list(self.tax_groups.values())
        by_code: dict[str, Product] = {}
        invoices: dict[str, list[RetailRow]] = {}
        for row in rows:
            if row.is_credit_note or row.quantity <= 0 or row.unit_price < 0:
                continue
            if row.stock_code not in by_code:
                if limit is not None and len(by_code) >= limit:
                    continue
                at = row.invoice_date
                price = int((row.unit_price * 100).to_integral_value(rounding=ROUND_HALF_UP))
                product = Product(self.new_id(), row.stock_code, None, row.description or row.stock_code, None,
                                  depts[len(by_code) % len(depts)].id, price * 6 // 10, price,
                                  groups[0].id, True, True, at, at)
                by_code[row.stock_code] = product
                self.products[product.id] = product
                self._stock_everywhere(product, at)
            if row.customer_id is not None and str(row.customer_id) not in self.customers:
                at = row.invoice_date
                self.customers[str(row.customer_id)] = Customer(str(row.customer_id), f"Customer {row.customer_id}",
                                                                None, None, None, 0, 0, None, at, at)
            invoices.setdefault(row.invoice_no, []).append(row)
        cashier = next(iter(self.users.values()))
        store = next(iter(self.stores.values()))
        for number, lines in invoices.items():
            picked = [(by_code[r.stock_code], r.quantity * 1000, by_code[r.stock_code].sell_price, 0) for r in lines]
            customer = str(lines[0].customer_id) if lines[0].customer_id is not None else None
            body = self.build_sale_body(store.id, picked, "CARD", customer, receipt=number)
            self.record_sale(body, cashier, at=lines[0].invoice_date)

    # -- sales -----------------------------------------------------------------------------------
    def group_rates(self, product: Product) -> list[TaxRate]:
        group = self.tax_groups.get(product.tax_group_id or "")
        return sorted(group.rates, key=lambda r: (r.sort_order, r.id)) if group else []

    def build_sale_body(self, store_id: str, lines: list[tuple[Product, int, int, int]], method: str,
                        customer_id: str | None, receipt: str | None = None) -> dict[str, Any]:
        """A create-sale body as a till builds it (``lines``: product, thousandths, unit price, discount)."""
        items = []
        for product, quantity, price, discount in lines:
            taxable = line_net(quantity, price) - discount
            rates = self.group_rates(product)
            amounts = tax_amounts(taxable, rates)
            items.append({"productId": product.id, "productName": product.name, "quantity": quantity,
                          "unitPrice": price, "taxRate": sum(r.rate for r in rates), "taxAmount": sum(amounts),
                          "discountAmount": discount, "lineTotal": taxable + sum(amounts),
                          "taxes": [{"taxRateName": r.name, "rate": r.rate, "taxAmount": a, "isCompound": r.is_compound,
                                     "sortOrder": r.sort_order} for r, a in zip(rates, amounts, strict=True)]})
        subtotal = sum(line_net(i["quantity"], i["unitPrice"]) for i in items)
        discount_total = sum(i["discountAmount"] for i in items)
        tax_total = sum(i["taxAmount"] for i in items)
        grand = subtotal - discount_total + tax_total
        return {"receiptNumber": receipt, "terminalId": "T01", "storeId": store_id, "customerId": customer_id,
                "subtotal": subtotal, "taxTotal": tax_total, "discountTotal": discount_total, "grandTotal": grand,
                "items": items, "payments": [{"method": method, "amount": grand, "reference": None}]}

    def record_sale(self, body: Any, cashier: User, *, at: datetime | None = None) -> Sale:
        """Validate a create-sale body (every total re-added; see SANDBOX.md) and record it;
        tracked stock at the sale's store goes down (it may go negative, as at a till).

        Raises:
            ApiError: 400 naming the first problem, 404 for an unknown store, product or customer,
                409 for a receipt number the store already used.
        """
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        store = self.stores.get(_text(body, "storeId", required=True))
        if store is None:
            raise ApiError(404, "Store not found")
        customer_id = _text(body, "customerId")
        if customer_id is not None and customer_id not in self.customers:
            raise ApiError(404, "Customer not found")
        raw_items = body.get("items")
        if not isinstance(raw_items, list) or not raw_items:
            raise ApiError(400, "items must be a non-empty array")
        items, products = [], []
        for n, raw in enumerate(raw_items):
            if not isinstance(raw, dict):
                raise ApiError(400, f"items[{n}] must be an object")
            product = self.products.get(_text(raw, "productId", required=True, where=f"items[{n}]."))
            if product is None:
                raise ApiError(404, "Product not found")
            quantity = _int(raw, "quantity", f"items[{n}].", minimum=1)
            price = _int(raw, "unitPrice", f"items[{n}].")
            discount = _int(raw, "discountAmount", f"items[{n}].", default=0)
            tax_amount = _int(raw, "taxAmount", f"items[{n}].", default=0)
            line_total = _int(raw, "lineTotal", f"items[{n}].")
            taxes = raw.get("taxes", [])
            if not isinstance(taxes, list):
                raise ApiError(400, f"items[{n}].taxes must be an array")
            net = line_net(quantity, price)
            if discount > net:
                raise ApiError(400, f"items[{n}].discountAmount is more than the line")
            clean_taxes, amounts = [], []
            for k, tax in enumerate(taxes):
                where = f"items[{n}].taxes[{k}]."
                if not isinstance(tax, dict):
                    raise ApiError(400, f"{where[:-1]} must be an object")
                rate = _int(tax, "rate", where)
                compound = tax.get("isCompound", False)
                if not isinstance(compound, bool):
                    raise ApiError(400, f"{where}isCompound must be a boolean")
                base = net - discount + (sum(amounts) if compound else 0)
                expected = round_half_up(base * rate, 10000)
                amount = _int(tax, "taxAmount", where)
                if amount != expected:
                    raise ApiError(400, f"{where}taxAmount is {amount}, expected {expected}")
                amounts.append(amount)
                clean_taxes.append({"taxRateName": str(tax.get("taxRateName") or "Tax")[:100], "rate": rate,
                                    "taxAmount": amount, "isCompound": compound,
                                    "sortOrder": _int(tax, "sortOrder", where, default=k)})
            if tax_amount != sum(amounts):
                raise ApiError(400, f"items[{n}].taxAmount is not the sum of its taxes")
            if line_total != net - discount + tax_amount:
                raise ApiError(400, f"items[{n}].lineTotal is {line_total}, expected {net - discount + tax_amount}")
            items.append({"id": self.new_id(), "productId": product.id,
                          "productName": str(raw.get("productName") or product.name)[:200], "quantity": quantity,
                          "unitPrice": price, "taxRate": _int(raw, "taxRate", f"items[{n}].", default=0),
                          "taxAmount": tax_amount, "discountAmount": discount, "lineTotal": line_total,
                          "taxes": clean_taxes})
            products.append(product)
        subtotal = sum(line_net(i["quantity"], i["unitPrice"]) for i in items)
        discount_total = sum(i["discountAmount"] for i in items)
        tax_total = sum(i["taxAmount"] for i in items)
        for name, expected in (("subtotal", subtotal), ("discountTotal", discount_total), ("taxTotal", tax_total),
                               ("grandTotal", subtotal - discount_total + tax_total)):
            if _int(body, name, "") != expected:
                raise ApiError(400, f"{name} is {body.get(name)}, expected {expected}")
        grand = subtotal - discount_total + tax_total
        raw_payments = body.get("payments")
        if not isinstance(raw_payments, list) or not raw_payments:
            raise ApiError(400, "payments must be a non-empty array")
        payments = []
        for n, raw in enumerate(raw_payments):
            if not isinstance(raw, dict):
                raise ApiError(400, f"payments[{n}] must be an object")
            method = raw.get("method")
            if method not in PAYMENT_METHODS:
                raise ApiError(400, f"payments[{n}].method must be one of {', '.join(PAYMENT_METHODS)}")
            reference = raw.get("reference")
            if reference is not None and not isinstance(reference, str):
                raise ApiError(400, f"payments[{n}].reference must be a string")
            payments.append({"id": self.new_id(), "method": method, "amount": _int(raw, "amount", f"payments[{n}]."),
                             "reference": reference})
        paid = sum(p["amount"] for p in payments)
        if paid < grand:
            raise ApiError(400, f"payments total {paid} is less than grandTotal {grand}")
        receipt = _text(body, "receiptNumber")
        if receipt is None:
            self.receipts += 1
            receipt = f"R-{self.receipts:05d}"
        if any(s.receipt_number == receipt and s.store_id == store.id for s in self.sales.values()):
            raise ApiError(409, "Receipt number already exists for this store")
        at = at or self.now()
        sale = Sale(self.new_id(), receipt, store.id, _text(body, "cashierId") or cashier.id, _text(body, "terminalId"),
                    customer_id, _text(body, "salesRepId"), subtotal, tax_total, discount_total, grand, paid - grand,
                    items, payments, "COMPLETED", at, at)
        self.sales[sale.id] = sale
        for item, product in zip(items, products, strict=True):
            self.move_stock(product, store.id, -item["quantity"], at)
        return sale

    def void_sale(self, sale: Sale, reason: str | None, *, at: datetime | None = None) -> Sale:
        """Void a completed sale; its tracked stock goes back. Raises :class:`ApiError` 409 when voided."""
        if sale.status == "VOIDED":
            raise ApiError(409, "Sale is already voided")
        at = at or self.now()
        sale.status, sale.voided_at, sale.void_reason, sale.updated_at = "VOIDED", at, reason, at
        for item in sale.items:
            product = self.products.get(item["productId"])
            if product is not None:
                self.move_stock(product, sale.store_id, item["quantity"], at)
        return sale

    def move_stock(self, product: Product, store_id: str, delta: int, at: datetime) -> Level | None:
        """Change a tracked product's stock at a store by ``delta`` thousandths."""
        if not product.track_stock:
            return None
        level = self.levels.get((product.id, store_id))
        if level is None:
            level = self.levels[(product.id, store_id)] = Level(self.new_id(), store_id, product.id, 0, 0, at)
        level.quantity += delta
        level.updated_at = at
        return level


# --- request helpers -----------------------------------------------------------------------------


def _text(body: dict[str, Any], name: str, *, required: bool = False, where: str = "") -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise ApiError(400, f"{where}{name} is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"{where}{name} must be a non-empty string")
    return value.strip()


def _int(body: dict[str, Any], name: str, where: str, *, default: int | None = None, minimum: int = 0) -> int:
    """An integer member (money in minor units, quantities in thousandths, rates in basis points)."""
    value = body.get(name, default)
    if value is None:
        if default is not None:
            return default
        raise ApiError(400, f"{where}{name} is required")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{where}{name} must be an integer")
    if not minimum <= value <= INT_MAX:
        raise ApiError(400, f"{where}{name} must be an integer from {minimum}")
    return value


def ok(data: Any, status: int = 200, **extra: Any) -> JSONResponse:
    """The success envelope; ``extra`` adds top-level members (``total``, ``page``, ``pageSize``)."""
    return JSONResponse({"success": True, "data": data, **extra}, status_code=status)


def fail(status: int, message: str) -> JSONResponse:
    """The failure envelope ``{"success": false, "error": message}``."""
    return JSONResponse({"success": False, "error": message}, status_code=status)


def _page_args(request: Request) -> tuple[int, int]:
    try:
        page = int(request.query_params.get("page", "1"))
        size = int(request.query_params.get("pageSize", str(DEFAULT_PAGE_SIZE)))
    except ValueError:
        raise ApiError(400, "page and pageSize must be integers") from None
    if page < 1 or size < 1:
        raise ApiError(400, "page and pageSize must be at least 1")
    return page, min(size, MAX_PAGE_SIZE)


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(400, "Request body is not valid JSON") from None


# --- HTTP layer ----------------------------------------------------------------------------------


class HQStoreAuth:
    """Pure ASGI middleware: ``Authorization: Bearer <JWT>`` on every ``/api/v1`` route but the
    login/refresh routes and the sync routes (``X-Sync-Token``); ``/health`` and ``/_sandbox``
    need nothing. Puts the user on ``scope["state"]["user"]``."""

    OPEN = frozenset({f"{API}/auth/login", f"{API}/auth/pin-login", f"{API}/auth/refresh"})
    SYNC = frozenset({f"{API}/sync/pull", f"{API}/sync/push", f"{API}/sync/status"})

    def __init__(self, app: ASGIApp, store: HQStore) -> None:
        self.app, self.store = app, store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or is_admin_path(scope) or not path.startswith(API + "/") or path in self.OPEN:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if path in self.SYNC:
            store_id = self.store.sync_tokens.get(headers.get("x-sync-token", ""))
            if store_id is None:
                await fail(401, "Invalid sync token")(scope, receive, send)
                return
            scope.setdefault("state", {})["sync_store"] = store_id
            await self.app(scope, receive, send)
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            await fail(401, "Authentication required")(scope, receive, send)
            return
        try:
            user = self.store.users.get(self.store.tokens.verify(token.strip()))
        except ApiError as exc:
            await fail(exc.status, exc.message)(scope, receive, send)
            return
        if user is None:
            await fail(401, "Invalid token")(scope, receive, send)
            return
        scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, send)


def _user(request: Request, permission: str | None) -> User:
    user: User = request.state.user
    if permission is not None and permission not in user.permissions:
        raise ApiError(403, f"Missing permission: {permission}")
    return user


class Handlers:
    """The vendor routes over one :class:`HQStore`."""

    def __init__(self, store: HQStore) -> None:
        self.store = store

    def routes(self) -> list[Route]:
        def r(path: str, fn: Callable[..., Any], methods: list[str], permission: str | None = None) -> Route:
            async def endpoint(request: Request) -> Response:
                try:
                    if permission != "-":
                        _user(request, permission)
                    return await fn(request)
                except ApiError as exc:
                    return fail(exc.status, exc.message)
            return Route(path, endpoint, methods=methods)

        a = API
        return [
            Route("/health", self.health, methods=["GET"]),
            Route("/_sandbox/tokens/revoke", self.revoke, methods=["POST"]),
            Route("/_sandbox/clock", self.advance_clock, methods=["POST"]),
            r(f"{a}/auth/login", self.login, ["POST"], "-"),
            r(f"{a}/auth/pin-login", self.pin_login, ["POST"], "-"),
            r(f"{a}/auth/refresh", self.refresh, ["POST"], "-"),
            r(f"{a}/auth/me", self.me, ["GET"]),
            r(f"{a}/stores", self.list_stores, ["GET"], "stores.view"),
            r(f"{a}/stores/current", self.current_store, ["GET"]),
            r(f"{a}/departments", self.list_departments, ["GET"], "products.view"),
            r(f"{a}/taxes", self.list_taxes, ["GET"], "taxes.view"),
            r(f"{a}/taxes/groups", self.list_groups, ["GET"], "taxes.view"),
            r(f"{a}/taxes/groups/{{id}}", self.get_group, ["GET"], "taxes.view"),
            r(f"{a}/products", self.list_products, ["GET"], "products.view"),
            r(f"{a}/products", self.create_product, ["POST"], "products.create"),
            r(f"{a}/products/barcode/{{barcode}}", self.product_by_barcode, ["GET"], "products.view"),
            r(f"{a}/products/{{id}}", self.get_product, ["GET"], "products.view"),
            r(f"{a}/products/{{id}}", self.update_product, ["PUT"], "products.edit"),
            r(f"{a}/products/{{id}}", self.delete_product, ["DELETE"], "products.delete"),
            r(f"{a}/customers", self.list_customers, ["GET"], "customers.view"),
            r(f"{a}/customers", self.create_customer, ["POST"], "customers.create"),
            r(f"{a}/customers/{{id}}", self.get_customer, ["GET"], "customers.view"),
            r(f"{a}/customers/{{id}}", self.update_customer, ["PUT"], "customers.edit"),
            r(f"{a}/customers/{{id}}", self.delete_customer, ["DELETE"], "customers.edit"),
            r(f"{a}/sales", self.list_sales, ["GET"], "pos.sell"),
            r(f"{a}/sales", self.create_sale, ["POST"], "pos.sell"),
            r(f"{a}/sales/{{id}}/void", self.void_sale, ["PUT"], "pos.void"),
            r(f"{a}/inventory", self.list_inventory, ["GET"], "inventory.view"),
            r(f"{a}/inventory/adjustments", self.adjust, ["POST"], "inventory.adjust"),
            r(f"{a}/transfers", self.list_transfers, ["GET"], "transfers.view"),
            r(f"{a}/transfers/{{id}}", self.get_transfer, ["GET"], "transfers.view"),
            r(f"{a}/sync/pull", self.sync_pull, ["GET"], "-"),
            r(f"{a}/sync/status", self.sync_status, ["GET"], "-"),
        ]

    # -- admin -----------------------------------------------------------------------------------
    async def revoke(self, request: Request) -> Response:
        self.store.tokens.revoke_all()
        return JSONResponse({"revoked_before": self.store.tokens.revoked_before})

    async def advance_clock(self, request: Request) -> Response:
        try:
            body = await request.json()
            seconds = body["advance"]
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": 'body must be {"advance": seconds >= 0}'}, status_code=422)
        self.store.offset += seconds
        return JSONResponse({"now": rfc3339(self.store.now())})

    # -- auth ------------------------------------------------------------------------------------
    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def _session(self, user: User) -> JSONResponse:
        return ok({**self.store.tokens.issue(user),
                   "user": {"id": user.id, "username": user.username, "displayName": user.display_name,
                            "isActive": True},
                   "permissions": list(user.permissions)})

    async def login(self, request: Request) -> Response:
        body = await _body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        username, pin = body.get("username"), body.get("pin", body.get("password"))
        if not isinstance(username, str) or not isinstance(pin, str) or not username or not pin:
            raise ApiError(400, "username and pin are required")
        user = next((u for u in self.store.users.values() if u.username == username), None)
        if user is None or not hmac.compare_digest(user.pin.encode(), pin.encode()):
            raise ApiError(401, "Invalid credentials")
        return self._session(user)

    async def pin_login(self, request: Request) -> Response:
        body = await _body(request)
        pin = body.get("pin") if isinstance(body, dict) else None
        if not isinstance(pin, str) or not pin:
            raise ApiError(400, "pin is required")
        user = next((u for u in self.store.users.values() if hmac.compare_digest(u.pin.encode(), pin.encode())), None)
        if user is None:
            raise ApiError(401, "Invalid PIN")
        return self._session(user)

    async def refresh(self, request: Request) -> Response:
        body = await _body(request)
        token = body.get("refreshToken") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ApiError(400, "refreshToken is required")
        user = self.store.users.get(self.store.tokens.use_refresh(token))
        if user is None:
            raise ApiError(401, "Invalid refresh token")
        return ok(self.store.tokens.issue(user))

    async def me(self, request: Request) -> Response:
        user: User = request.state.user
        return ok({"user": {"id": user.id, "username": user.username, "displayName": user.display_name,
                            "isActive": True}, "permissions": list(user.permissions)})

    # -- reference data --------------------------------------------------------------------------
    async def list_stores(self, request: Request) -> Response:
        return ok([s.as_json() for s in self.store.stores.values()])

    async def current_store(self, request: Request) -> Response:
        return ok(next(iter(self.store.stores.values())).as_json())

    async def list_departments(self, request: Request) -> Response:
        return ok([d.as_json() for d in self.store.departments.values()])

    async def list_taxes(self, request: Request) -> Response:
        return ok([t.as_json() for t in self.store.tax_rates.values()])

    async def list_groups(self, request: Request) -> Response:
        return ok([g.as_json() for g in self.store.tax_groups.values()])

    async def get_group(self, request: Request) -> Response:
        group = self.store.tax_groups.get(request.path_params["id"])
        if group is None:
            raise ApiError(404, "Tax group not found")
        return ok(group.as_json())

    # -- products --------------------------------------------------------------------------------
    def _paged(self, items: list[Any], request: Request, render: Callable[[Any], Any]) -> Response:
        page, size = _page_args(request)
        sandbox: Sandbox = request.app.state.sandbox
        sliced = paginate(items, page, size, sandbox)
        return ok([render(i) for i in sliced.items], total=sliced.total, page=page, pageSize=size)

    async def list_products(self, request: Request) -> Response:
        items = list(self.store.products.values())
        search = request.query_params.get("search")
        if search:
            needle = search.lower()
            items = [p for p in items if needle in p.name.lower() or needle in p.sku.lower()
                     or needle in (p.barcode or "")]
        department = request.query_params.get("departmentId")
        if department:
            items = [p for p in items if p.department_id == department]
        return self._paged(items, request, lambda p: p.as_json())

    def _product(self, request: Request) -> Product:
        product = self.store.products.get(request.path_params["id"])
        if product is None:
            raise ApiError(404, "Product not found")
        return product

    async def get_product(self, request: Request) -> Response:
        return ok(self._product(request).as_json(self.store.tax_groups))

    async def product_by_barcode(self, request: Request) -> Response:
        barcode = request.path_params["barcode"]
        product = next((p for p in self.store.products.values() if p.barcode == barcode), None)
        if product is None:
            raise ApiError(404, "Product not found")
        return ok(product.as_json(self.store.tax_groups))

    def _product_fields(self, body: Any, current: Product | None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        out: dict[str, Any] = {}
        for name, attr in (("sku", "sku"), ("name", "name")):
            if name in body or current is None:
                out[attr] = _text(body, name, required=True)
        for name, attr in (("barcode", "barcode"), ("description", "description")):
            if name in body:
                out[attr] = _text(body, name)
        for name, attr in (("costPrice", "cost_price"), ("sellPrice", "sell_price")):
            if name in body or current is None:
                out[attr] = _int(body, name, "", default=0 if name == "costPrice" else None)
        if "departmentId" in body:
            dept = _text(body, "departmentId")
            if dept is not None and dept not in self.store.departments:
                raise ApiError(404, "Department not found")
            out["department_id"] = dept
        if "taxGroupId" in body:
            group = _text(body, "taxGroupId")
            if group is not None and group not in self.store.tax_groups:
                raise ApiError(404, "Tax group not found")
            out["tax_group_id"] = group
        if "trackStock" in body:
            if not isinstance(body["trackStock"], bool):
                raise ApiError(400, "trackStock must be a boolean")
            out["track_stock"] = body["trackStock"]
        sku, barcode = out.get("sku"), out.get("barcode")
        for other in self.store.products.values():
            if other is current:
                continue
            if sku is not None and other.sku == sku:
                raise ApiError(409, "SKU already exists")
            if barcode is not None and other.barcode == barcode:
                raise ApiError(409, "Barcode already exists")
        return out

    async def create_product(self, request: Request) -> Response:
        fields = self._product_fields(await _body(request), None)
        at = self.store.now()
        product = Product(self.store.new_id(), fields["sku"], fields.get("barcode"), fields["name"],
                          fields.get("description"), fields.get("department_id"), fields["cost_price"],
                          fields["sell_price"], fields.get("tax_group_id"), fields.get("track_stock", True), True, at, at)
        self.store.products[product.id] = product
        for store in self.store.stores.values():
            if product.track_stock:
                self.store.levels[(product.id, store.id)] = Level(self.store.new_id(), store.id, product.id, 0, 0, at)
        return ok(product.as_json(self.store.tax_groups), 201)

    async def update_product(self, request: Request) -> Response:
        product = self._product(request)
        for attr, value in self._product_fields(await _body(request), product).items():
            setattr(product, attr, value)
        product.updated_at = self.store.now()
        return ok(product.as_json(self.store.tax_groups))

    async def delete_product(self, request: Request) -> Response:
        product = self._product(request)
        product.is_active, product.updated_at = False, self.store.now()
        return ok(product.as_json())

    # -- customers -------------------------------------------------------------------------------
    async def list_customers(self, request: Request) -> Response:
        items = list(self.store.customers.values())
        search = request.query_params.get("search")
        if search:
            needle = search.lower()
            items = [c for c in items if needle in c.name.lower() or needle in (c.email or "").lower()
                     or needle in (c.phone or "")]
        return self._paged(items, request, lambda c: c.as_json())

    def _customer(self, request: Request) -> Customer:
        customer = self.store.customers.get(request.path_params["id"])
        if customer is None:
            raise ApiError(404, "Customer not found")
        return customer

    async def get_customer(self, request: Request) -> Response:
        return ok(self._customer(request).as_json())

    @staticmethod
    def _customer_fields(body: Any, create: bool) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        out: dict[str, Any] = {}
        if "name" in body or create:
            out["name"] = _text(body, "name", required=True)
        for name in ("email", "phone", "address"):
            if name in body:
                out[name] = _text(body, name)
        if out.get("email") is not None and "@" not in out["email"]:
            raise ApiError(400, "email is not valid")
        if "creditLimit" in body:
            out["credit_limit"] = None if body["creditLimit"] is None else _int(body, "creditLimit", "")
        return out

    async def create_customer(self, request: Request) -> Response:
        fields = self._customer_fields(await _body(request), True)
        at = self.store.now()
        customer = Customer(self.store.new_id(), fields["name"], fields.get("email"), fields.get("phone"),
                            fields.get("address"), 0, 0, fields.get("credit_limit"), at, at)
        self.store.customers[customer.id] = customer
        return ok(customer.as_json(), 201)

    async def update_customer(self, request: Request) -> Response:
        customer = self._customer(request)
        for attr, value in self._customer_fields(await _body(request), False).items():
            setattr(customer, attr, value)
        customer.updated_at = self.store.now()
        return ok(customer.as_json())

    async def delete_customer(self, request: Request) -> Response:
        customer = self._customer(request)
        del self.store.customers[customer.id]
        return ok({"id": customer.id})

    # -- sales -----------------------------------------------------------------------------------
    @staticmethod
    def _date(request: Request, name: str, end: bool) -> datetime | None:
        text = request.query_params.get(name)
        if not text:
            return None
        try:
            if len(text) == 10:
                day = datetime.fromisoformat(text).replace(tzinfo=UTC)
                return day + timedelta(days=1) if end else day
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(400, f"{name} must be a date (YYYY-MM-DD) or an ISO 8601 time") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    async def list_sales(self, request: Request) -> Response:
        start, end = self._date(request, "date_from", False), self._date(request, "date_to", True)
        store_id, status = request.query_params.get("store_id"), request.query_params.get("status")
        if status is not None and status not in ("COMPLETED", "VOIDED"):
            raise ApiError(400, "status must be COMPLETED or VOIDED")
        items = [s for s in self.store.sales.values()
                 if (start is None or s.created_at >= start) and (end is None or s.created_at < end)
                 and (store_id is None or s.store_id == store_id) and (status is None or s.status == status)]
        return self._paged(items, request, lambda s: s.as_json())

    async def create_sale(self, request: Request) -> Response:
        sale = self.store.record_sale(await _body(request), request.state.user)
        return ok(sale.as_json(), 201)

    async def void_sale(self, request: Request) -> Response:
        sale = self.store.sales.get(request.path_params["id"])
        if sale is None:
            raise ApiError(404, "Sale not found")
        body = await _body(request)
        reason = _text(body, "reason") if isinstance(body, dict) else None
        return ok(self.store.void_sale(sale, reason).as_json())

    # -- inventory -------------------------------------------------------------------------------
    async def list_inventory(self, request: Request) -> Response:
        store_id, product_id = request.query_params.get("store_id"), request.query_params.get("product_id")
        low = request.query_params.get("low_stock") in ("true", "1")
        items = [lv for lv in self.store.levels.values()
                 if (store_id is None or lv.store_id == store_id) and (product_id is None or lv.product_id == product_id)
                 and (not low or lv.quantity <= lv.reorder_level)]
        return self._paged(items, request, lambda lv: lv.as_json())

    async def adjust(self, request: Request) -> Response:
        body = await _body(request)
        if not isinstance(body, dict):
            raise ApiError(400, "Request body must be a JSON object")
        store = self.store.stores.get(_text(body, "storeId", required=True))
        if store is None:
            raise ApiError(404, "Store not found")
        product = self.store.products.get(_text(body, "productId", required=True))
        if product is None:
            raise ApiError(404, "Product not found")
        quantity = body.get("quantity")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity == 0 or abs(quantity) > INT_MAX:
            raise ApiError(400, "quantity must be a non-zero integer (thousandths)")
        reason = body.get("reason")
        if reason not in ADJUSTMENT_REASONS:
            raise ApiError(400, f"reason must be one of {', '.join(ADJUSTMENT_REASONS)}")
        notes = _text(body, "notes")
        if not product.track_stock:
            raise ApiError(400, "Product does not track stock")
        level = self.store.levels.get((product.id, store.id))
        before = level.quantity if level else 0
        if before + quantity < 0:
            raise ApiError(400, f"Insufficient stock: on hand {before}, adjustment {quantity}")
        at = self.store.now()
        level = self.store.move_stock(product, store.id, quantity, at)
        assert level is not None
        record = {"id": self.store.new_id(), "storeId": store.id, "productId": product.id, "quantity": quantity,
                  "quantityBefore": before, "quantityAfter": level.quantity, "reason": reason,
                  "notes": notes[:500] if notes else None, "createdBy": request.state.user.id,
                  "createdAt": rfc3339(at)}
        self.store.adjustments.append(record)
        return ok(record, 201)

    # -- transfers -------------------------------------------------------------------------------
    async def list_transfers(self, request: Request) -> Response:
        status = request.query_params.get("status")
        items = [t for t in self.store.transfers.values() if status is None or t.status == status]
        return self._paged(items, request, lambda t: t.as_json(items=False))

    async def get_transfer(self, request: Request) -> Response:
        transfer = self.store.transfers.get(request.path_params["id"])
        if transfer is None:
            raise ApiError(404, "Transfer not found")
        return ok(transfer.as_json(items=True))

    # -- sync (sync token) -----------------------------------------------------------------------
    async def sync_pull(self, request: Request) -> Response:
        entity = request.query_params.get("entity")
        sources: dict[str, Callable[[], list[Any]]] = {
            "products": lambda: list(self.store.products.values()),
            "customers": lambda: list(self.store.customers.values()),
            "sales": lambda: list(self.store.sales.values()),
        }
        if entity not in sources:
            raise ApiError(400, "entity must be one of products, customers, sales")
        since = self._date(request, "since", False)
        items = sorted((i for i in sources[entity]() if since is None or i.updated_at >= since),
                       key=lambda i: (i.updated_at, i.id))
        page, size = _page_args(request)
        sliced = paginate(items, page, size, request.app.state.sandbox)
        return ok([i.as_json() for i in sliced.items], total=sliced.total, page=page, pageSize=size,
                  serverTime=rfc3339(self.store.now()))

    async def sync_status(self, request: Request) -> Response:
        return ok({"storeId": request.scope["state"]["sync_store"], "pending": 0, "failed": 0,
                   "serverTime": rfc3339(self.store.now())})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return fail(404, "Route not found")
    if exc.status_code == 405:
        return fail(405, "Method not allowed")
    return fail(exc.status_code, str(exc.detail))


def create_app(
    *,
    seed_csv: str | Path | None = None,
    products: int | None = None,
    customers: int | None = None,
    sales: int | None = None,
    stores: int = 2,
    users: dict[str, str] | None = None,
    sync_tokens: Iterable[str] = DEFAULT_SYNC_TOKENS,
    token_ttl: int = DEFAULT_TOKEN_TTL,
    refresh_ttl: int = DEFAULT_REFRESH_TTL,
    clock: Callable[[], float] | None = None,
    seed: int = 0,
    faults: Faults | dict[str, Any] | None = None,
) -> Starlette:
    """Build an HQ/Store HQ-server sandbox (``tillgate sandbox hqstore``).

    Options:

    - ``seed_csv``: a UCI Online Retail CSV: one product per StockCode (price in pence, ``sku`` =
      StockCode), one customer per CustomerID, one sale per invoice; ``products`` caps StockCodes.
    - ``products`` / ``customers`` / ``sales``: without a CSV, how many to generate (40 / 15 / 10).
    - ``stores``: how many stores (default 2, at least 1); each product has a stock level at each.
    - ``users``: ``{username: pin}`` with every permission (default ``{"admin": "1234"}``).
    - ``sync_tokens``: valid ``X-Sync-Token`` values, bound to the first store.
    - ``token_ttl`` / ``refresh_ttl``: access / refresh token lifetimes in seconds (900 / 7 days):
      the knob for token expiry in the middle of a sync.
    - ``clock``: epoch seconds (default ``time.time``); ``POST /_sandbox/clock`` adds to it.
    - ``seed``: RNG seed for ids, generated data and the fault knobs. ``faults``: initial knobs.

    ``app.state.hqstore`` is the :class:`HQStore`, ``app.state.sandbox`` the fault state.

    Raises:
        ValueError: fewer than one store or user, or a TTL below 1 second.
    """
    if stores < 1:
        raise ValueError("at least one store")
    if token_ttl < 1 or refresh_ttl < 1:
        raise ValueError("token lifetimes are at least 1 second")
    store = HQStore(seed=seed, access_ttl=token_ttl, refresh_ttl=refresh_ttl, clock=clock)
    for username, pin in (users or DEFAULT_USERS).items():
        store.add_user(username, pin)
    if not store.users:
        raise ValueError("at least one user")
    store.seed_reference(stores)
    first_store = next(iter(store.stores))
    store.sync_tokens = dict.fromkeys(sync_tokens, first_store)
    if seed_csv is not None:
        store.seed_retail(read_retail_csv(seed_csv), products)
    else:
        store.seed_products(40 if products is None else products)
        store.seed_customers(15 if customers is None else customers)
        store.seed_sales(10 if sales is None else sales)
    store.seed_transfers()

    sandbox = Sandbox(
        seed=seed, faults=faults, error_response=fail, rate_limit_exempt={"/health"},
        state_extra=lambda: {"hqstore": {
            "products": len(store.products), "customers": len(store.customers), "sales": len(store.sales),
            "stores": len(store.stores), "tokens_issued": store.tokens.issued,
            "tokens_refreshed": store.tokens.refreshed, "adjustments": len(store.adjustments)}},
    )
    app = sandbox.build_app(Handlers(store).routes(), middleware=[Middleware(HQStoreAuth, store=store)],
                            exception_handlers={HTTPException: _http_error})
    app.state.hqstore = store
    return app
