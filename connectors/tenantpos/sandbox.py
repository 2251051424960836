"""An in-memory, multi-tenant TenantPOS: the fake vendor server the TenantPOS connector is
developed and tested against (``tillgate sandbox tenantpos``).

It follows ``vendor-docs/tenant-pos-api.txt``: base path ``/api``, JWT-style bearer auth with
15-minute access tokens and 7-day refresh tokens (``/api/auth/*``), the resource modules under
``/api/v1`` (products with variants and barcode lookup, the category tree, per-store stock with
delta adjust, absolute set, low-stock thresholds and the movement history, sales checkout / void
/ return, payments, customers with groups and loyalty points, stores), the standard
``{success, data, meta}`` / ``{success: false, error: {code, message, details}}`` envelopes and
the status codes of the doc's table (400 with Zod ``details``, 401, 403, 404 across tenants,
409 duplicate SKU, 422 insufficient stock / credit limit, 429). Every choice made where the doc
is silent is in ``connectors/tenantpos/SANDBOX.md``; the fault knobs and the ``/_sandbox`` admin
routes come from :mod:`gateway.testing.sandbox`, plus ``/_sandbox/tokens`` (token lifetimes and
forced expiry).

Money and quantities are :class:`~decimal.Decimal` inside and decimal *strings* on the wire,
written the way Prisma's ``Decimal`` (decimal.js) writes them: ``"12.5"`` for 12.50, ``"3"`` for
3.000. Nothing here is ever a float.
"""

from __future__ import annotations

import random
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.testing.sandbox import Faults, RetailRow, Sandbox, read_retail_csv

BASE_PATH = "/api"
V1 = f"{BASE_PATH}/v1"
#: documented lifetimes ("Connection Details"): 15 minutes and 7 days, in seconds
ACCESS_TTL = 15 * 60
REFRESH_TTL = 7 * 24 * 3600
DEFAULT_PASSWORD = "sandbox-password"
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
CENT = Decimal("0.01")
MILLI = Decimal("0.001")
ZERO = Decimal(0)
#: when the seeded data was made (fixed, so a seeded sandbox answers the same bytes on every run)
SEEDED_AT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
PAYMENT_METHODS = ("CASH", "CARD", "MOBILE", "BANK_TRANSFER", "CREDIT", "OTHER")
UNITS = ("pcs", "kg", "g", "l", "ml", "box")
ADJUST_REASONS = ("DAMAGE", "THEFT", "EXPIRED", "RESTOCK", "CORRECTION", "RETURN", "SALE", "COUNT", "OTHER")

#: role -> permissions (the doc's "Permission" column); ADMIN has every permission
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "ADMIN": frozenset({"*"}),
    "MANAGER": frozenset({
        "product:read", "product:write", "category:read", "category:write", "inventory:read", "inventory:write",
        "sale:create", "sale:read", "sale:void", "sale:return", "customer:read", "customer:write",
        "store:manage", "report:read",
    }),
    "CASHIER": frozenset({"product:read", "category:read", "inventory:read", "sale:create", "sale:read",
                          "customer:read"}),
}


# --- wire helpers ------------------------------------------------------------------------------------
def dec(value: Decimal | None) -> str | None:
    """A Decimal as decimal.js writes it (Prisma ``Decimal`` JSON): no exponent, no trailing zeros."""
    if value is None:
        return None
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def money(value: Any) -> Decimal:
    """A Decimal rounded half-up to 2 places (money columns are ``Decimal(12,2)``)."""
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


def qty(value: Any) -> Decimal:
    """A Decimal rounded half-up to 3 places (quantity columns are ``Decimal(12,3)``)."""
    return Decimal(str(value)).quantize(MILLI, rounding=ROUND_HALF_UP)


def iso(moment: datetime) -> str:
    """JavaScript's ``Date.toISOString()``: UTC with milliseconds and ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return dec(value)
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(type(value).__name__)


class JSON(Response):
    """``application/json`` rendered with orjson; Decimals as strings, datetimes as ISO (ms, Z)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_default, option=orjson.OPT_PASSTHROUGH_DATETIME)


def ok(data: Any, status: int = 200, meta: dict[str, Any] | None = None, message: str | None = None) -> Response:
    """The success envelope ``{"success": true, "data": ..., "meta"?: ..., "message"?: ...}``."""
    body: dict[str, Any] = {"success": True, "data": data}
    if meta is not None:
        body["meta"] = meta
    if message is not None:
        body["message"] = message
    return JSON(body, status_code=status)


class Fail(Exception):
    """An error answer: ``{"success": false, "error": {"code", "message", "details"?}}``."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers

    def response(self) -> Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return JSON({"success": False, "error": error}, status_code=self.status, headers=self.headers)


def _error_response(status: int, message: str) -> Response:
    code = {429: "RATE_LIMITED", 503: "SERVICE_UNAVAILABLE"}.get(status, "INTERNAL_SERVER_ERROR")
    return Fail(status, code, message).response()


def zod_details(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as Zod issues: ``[{"code", "path": [...], "message"}]``."""
    out = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        out.append({"code": "invalid_type" if err["type"] in ("missing", "model_type") else err["type"],
                    "path": list(err["loc"]), "message": "Required" if err["type"] == "missing" else err["msg"]})
    return out


def parse(model: type[BaseModel], body: Any) -> Any:
    """Validate a request body like the vendor's Zod schemas (400 ``VALIDATION_ERROR`` with details)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise Fail(400, "VALIDATION_ERROR", "Validation failed", zod_details(exc)) from None


# --- request bodies (the vendor's Zod schemas, as the sandbox fixes them: SANDBOX.md) ----------------
Money = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=2, allow_inf_nan=False)]
Qty = Annotated[Decimal, Field(max_digits=12, decimal_places=3, allow_inf_nan=False)]
PosQty = Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=3, allow_inf_nan=False)]
NonNegQty = Annotated[Decimal, Field(ge=0, max_digits=12, decimal_places=3, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)  # Zod strips unknown keys


class LoginBody(_Body):
    email: Annotated[str, Field(min_length=3, max_length=254)]
    password: Annotated[str, Field(min_length=1, max_length=200)]
    tenantSlug: Annotated[str, Field(min_length=1, max_length=60)]


class RefreshBody(_Body):
    refreshToken: Annotated[str, Field(min_length=1)]


class LogoutBody(_Body):
    refreshToken: str | None = None


class ChangePasswordBody(_Body):
    currentPassword: Annotated[str, Field(min_length=1)]
    newPassword: Annotated[str, Field(min_length=8, max_length=200)]


class VariantBody(_Body):
    name: Name
    sku: Annotated[str, Field(min_length=1, max_length=64)]
    barcode: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    attributes: dict[str, str] = Field(default_factory=dict)
    costPrice: Money | None = None
    sellingPrice: Money | None = None
    isActive: bool = True


class VariantPatch(_Body):
    name: Name | None = None
    sku: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    barcode: str | None = None
    attributes: dict[str, str] | None = None
    costPrice: Money | None = None
    sellingPrice: Money | None = None
    isActive: bool | None = None


class ProductBody(_Body):
    name: Name
    sku: Annotated[str, Field(min_length=1, max_length=64)]
    barcode: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    description: Annotated[str, Field(max_length=2000)] | None = None
    categoryId: str | None = None
    unit: Literal["pcs", "kg", "g", "l", "ml", "box"] = "pcs"
    costPrice: Money = ZERO
    sellingPrice: Money
    taxRate: Annotated[Decimal, Field(ge=0, le=100, max_digits=5, decimal_places=2)] = ZERO
    trackInventory: bool = True
    isActive: bool = True
    variants: list[VariantBody] = Field(default_factory=list, max_length=100)


class ProductPatch(_Body):
    name: Name | None = None
    sku: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    barcode: str | None = None
    description: str | None = None
    categoryId: str | None = None
    unit: Literal["pcs", "kg", "g", "l", "ml", "box"] | None = None
    costPrice: Money | None = None
    sellingPrice: Money | None = None
    taxRate: Annotated[Decimal, Field(ge=0, le=100, max_digits=5, decimal_places=2)] | None = None
    trackInventory: bool | None = None
    isActive: bool | None = None


class CategoryBody(_Body):
    name: Name
    parentId: str | None = None


class AdjustBody(_Body):
    storeId: str
    productId: str
    variantId: str | None = None
    quantity: Qty
    reason: Literal[ADJUST_REASONS] = "CORRECTION"  # type: ignore[valid-type]
    note: Annotated[str, Field(max_length=500)] | None = None
    reference: Annotated[str, Field(max_length=120)] | None = None


class SetBody(_Body):
    storeId: str
    productId: str
    variantId: str | None = None
    quantity: NonNegQty
    reason: Literal[ADJUST_REASONS] = "COUNT"  # type: ignore[valid-type]
    note: Annotated[str, Field(max_length=500)] | None = None
    reference: Annotated[str, Field(max_length=120)] | None = None


class ThresholdBody(_Body):
    lowStockThreshold: NonNegQty | None
    variantId: str | None = None


class CheckoutItem(_Body):
    productId: str
    variantId: str | None = None
    quantity: PosQty
    unitPrice: Money | None = None
    discount: Money = ZERO


class CheckoutPayment(_Body):
    method: Literal[PAYMENT_METHODS]  # type: ignore[valid-type]
    amount: Money
    reference: Annotated[str, Field(max_length=120)] | None = None


class CheckoutBody(_Body):
    storeId: str
    customerId: str | None = None
    items: list[CheckoutItem] = Field(min_length=1, max_length=500)
    payments: list[CheckoutPayment] = Field(default_factory=list, max_length=20)
    note: Annotated[str, Field(max_length=500)] | None = None
    reference: Annotated[str, Field(max_length=120)] | None = None


class VoidBody(_Body):
    reason: Annotated[str, Field(max_length=500)] | None = None


class ReturnItem(_Body):
    saleItemId: str
    quantity: PosQty


class ReturnBody(_Body):
    items: list[ReturnItem] | None = Field(default=None, min_length=1)
    reason: Annotated[str, Field(max_length=500)] | None = None
    restock: bool = True


class CollectDueBody(_Body):
    saleId: str
    method: Literal[PAYMENT_METHODS]  # type: ignore[valid-type]
    amount: Annotated[Decimal, Field(gt=0, max_digits=12, decimal_places=2)]
    reference: str | None = None


class CustomerBody(_Body):
    name: Name
    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)] | None = None
    phone: Annotated[str, Field(min_length=3, max_length=30)] | None = None
    address: Annotated[str, Field(max_length=500)] | None = None
    groupId: str | None = None
    creditLimit: Money | None = None


class CustomerPatch(_Body):
    name: Name | None = None
    email: Annotated[str, Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)] | None = None
    phone: Annotated[str, Field(min_length=3, max_length=30)] | None = None
    address: Annotated[str, Field(max_length=500)] | None = None
    groupId: str | None = None
    creditLimit: Money | None = None


class GroupBody(_Body):
    name: Name
    discountPercent: Annotated[Decimal, Field(ge=0, le=100, decimal_places=2)] = ZERO


class LoyaltyAdjustBody(_Body):
    points: int = Field(ge=-1_000_000, le=1_000_000)
    reason: Annotated[str, Field(min_length=1, max_length=200)]


# --- records -------------------------------------------------------------------------------------------
@dataclass
class User:
    """A tenant user (``role`` decides the permissions, :data:`ROLE_PERMISSIONS`)."""

    id: str
    email: str
    name: str
    role: str
    password: str
    active: bool = True

    def can(self, permission: str) -> bool:
        """Whether the role grants ``permission`` (the doc's Permission column)."""
        granted = ROLE_PERMISSIONS.get(self.role, frozenset())
        return "*" in granted or permission in granted


@dataclass
class Store:
    """A shop (stock and sales are per store)."""

    id: str
    name: str
    code: str
    address: str | None
    phone: str | None
    timezone: str
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None

    def wire(self) -> dict[str, Any]:
        """The object as the API answers it (money and quantities as decimal strings)."""
        return {"id": self.id, "name": self.name, "code": self.code, "address": self.address, "phone": self.phone,
                "timezone": self.timezone, "isActive": self.deleted_at is None, "createdAt": self.created_at,
                "updatedAt": self.updated_at}


@dataclass
class Category:
    """A catalog category; ``parent_id`` makes the tree."""

    id: str
    name: str
    parent_id: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None

    def wire(self) -> dict[str, Any]:
        """The object as the API answers it (money and quantities as decimal strings)."""
        return {"id": self.id, "name": self.name, "parentId": self.parent_id, "createdAt": self.created_at,
                "updatedAt": self.updated_at}


@dataclass
class Variant:
    """A product variant (its own SKU, barcode, prices; stock is kept per variant)."""

    id: str
    name: str
    sku: str
    barcode: str | None
    attributes: dict[str, str]
    cost_price: Decimal | None
    selling_price: Decimal | None
    active: bool
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None

    def wire(self) -> dict[str, Any]:
        """The object as the API answers it (money and quantities as decimal strings)."""
        return {"id": self.id, "name": self.name, "sku": self.sku, "barcode": self.barcode,
                "attributes": dict(self.attributes), "costPrice": self.cost_price, "sellingPrice": self.selling_price,
                "isActive": self.active, "createdAt": self.created_at, "updatedAt": self.updated_at}


@dataclass
class Product:
    """A catalog product; money in the tenant's currency (major unit), ``tax_rate`` in percent."""

    id: str
    name: str
    sku: str
    barcode: str | None
    description: str | None
    category_id: str | None
    unit: str
    cost_price: Decimal
    selling_price: Decimal
    tax_rate: Decimal
    track_inventory: bool
    active: bool
    created_at: datetime
    updated_at: datetime
    variants: list[Variant] = field(default_factory=list)
    deleted_at: datetime | None = None

    def live_variants(self) -> list[Variant]:
        """The variants not soft-deleted, in creation order."""
        return [v for v in self.variants if v.deleted_at is None]

    def variant(self, variant_id: str | None) -> Variant | None:
        """The live variant ``variant_id``, or ``None``."""
        return next((v for v in self.live_variants() if v.id == variant_id), None)


@dataclass
class StockRow:
    """The stock of one product (or variant) at one store; quantities have 3 decimals."""

    id: str
    store_id: str
    product_id: str
    variant_id: str | None
    quantity: Decimal
    low_stock_threshold: Decimal | None
    updated_at: datetime

    def wire(self) -> dict[str, Any]:
        """The object as the API answers it (money and quantities as decimal strings)."""
        return {"id": self.id, "storeId": self.store_id, "productId": self.product_id, "variantId": self.variant_id,
                "quantity": self.quantity, "lowStockThreshold": self.low_stock_threshold,
                "isLow": self.low_stock_threshold is not None and self.quantity <= self.low_stock_threshold,
                "updatedAt": self.updated_at}


@dataclass
class Movement:
    """One change of a stock row (the history ``GET /inventory/movements`` lists, oldest first)."""

    id: str
    seq: int
    stock_id: str
    store_id: str
    product_id: str
    variant_id: str | None
    type: str
    quantity: Decimal
    balance_after: Decimal
    reason: str | None
    note: str | None
    reference: str | None
    user_id: str | None
    created_at: datetime

    def wire(self) -> dict[str, Any]:
        """The object as the API answers it (money and quantities as decimal strings)."""
        return {"id": self.id, "stockId": self.stock_id, "storeId": self.store_id, "productId": self.product_id,
                "variantId": self.variant_id, "type": self.type, "quantity": self.quantity,
                "balanceAfter": self.balance_after, "reason": self.reason, "note": self.note,
                "reference": self.reference, "userId": self.user_id, "createdAt": self.created_at}


@dataclass
class Group:
    """A customer group (a standing discount percent)."""

    id: str
    name: str
    discount_percent: Decimal
    created_at: datetime
    updated_at: datetime

    def wire(self) -> dict[str, Any]:
        """The object as the API answers it (money and quantities as decimal strings)."""
        return {"id": self.id, "name": self.name, "discountPercent": self.discount_percent,
                "createdAt": self.created_at, "updatedAt": self.updated_at}


@dataclass
class Customer:
    """A customer: ``balance`` is what they owe (due sales), ``loyalty_points`` whole points."""

    id: str
    name: str
    email: str | None
    phone: str | None
    address: str | None
    group_id: str | None
    credit_limit: Decimal | None
    balance: Decimal
    loyalty_points: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    loyalty: list[dict[str, Any]] = field(default_factory=list)
    ledger: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SaleItem:
    """One sale line: ``total = quantity * unit_price - discount + tax_amount`` (money, 2 places)."""

    id: str
    product_id: str
    variant_id: str | None
    name: str
    sku: str
    quantity: Decimal
    unit_price: Decimal
    discount: Decimal
    tax_rate: Decimal
    tax_amount: Decimal
    total: Decimal
    returned_quantity: Decimal = ZERO

    def wire(self) -> dict[str, Any]:
        """The object as the API answers it (money and quantities as decimal strings)."""
        return {"id": self.id, "productId": self.product_id, "variantId": self.variant_id, "name": self.name,
                "sku": self.sku, "quantity": self.quantity, "unitPrice": self.unit_price, "discount": self.discount,
                "taxRate": self.tax_rate, "taxAmount": self.tax_amount, "total": self.total,
                "returnedQuantity": self.returned_quantity}


@dataclass
class Payment:
    """A payment towards a sale (at checkout or a later due collection)."""

    id: str
    sale_id: str
    customer_id: str | None
    method: str
    amount: Decimal
    reference: str | None
    created_at: datetime

    def wire(self) -> dict[str, Any]:
        """The object as the API answers it (money and quantities as decimal strings)."""
        return {"id": self.id, "saleId": self.sale_id, "customerId": self.customer_id, "method": self.method,
                "amount": self.amount, "reference": self.reference, "createdAt": self.created_at}


@dataclass
class Sale:
    """A completed checkout and what happened to it since (void, returns, due collections)."""

    id: str
    invoice_number: str
    store_id: str
    customer_id: str | None
    cashier_id: str | None
    items: list[SaleItem]
    payments: list[Payment]
    subtotal: Decimal
    discount_total: Decimal
    tax_total: Decimal
    total: Decimal
    change_amount: Decimal
    status: str
    note: str | None
    reference: str | None
    created_at: datetime
    updated_at: datetime
    returns: list[dict[str, Any]] = field(default_factory=list)
    void_reason: str | None = None
    voided_at: datetime | None = None

    @property
    def paid(self) -> Decimal:
        """Payments kept (the change given back is not kept)."""
        return sum((p.amount for p in self.payments), ZERO) - self.change_amount

    @property
    def due(self) -> Decimal:
        return max(self.total - self.paid, ZERO) if self.status != "VOIDED" else ZERO

    @property
    def payment_status(self) -> str:
        if self.paid >= self.total:
            return "PAID"
        return "PARTIAL" if self.paid > 0 else "DUE"

    def wire(self) -> dict[str, Any]:
        """The object as the API answers it (money and quantities as decimal strings)."""
        return {"id": self.id, "invoiceNumber": self.invoice_number, "storeId": self.store_id,
                "customerId": self.customer_id, "cashierId": self.cashier_id, "status": self.status,
                "paymentStatus": self.payment_status, "items": [i.wire() for i in self.items],
                "payments": [p.wire() for p in self.payments], "subtotal": self.subtotal,
                "discountTotal": self.discount_total, "taxTotal": self.tax_total, "total": self.total,
                "paidAmount": self.paid, "dueAmount": self.due, "changeAmount": self.change_amount,
                "returns": [dict(r) for r in self.returns], "note": self.note, "reference": self.reference,
                "voidReason": self.void_reason, "voidedAt": self.voided_at, "createdAt": self.created_at,
                "updatedAt": self.updated_at}


@dataclass
class Session:
    """One login: a refresh token (7 days) and the access tokens issued from it (15 minutes)."""

    id: str
    user_id: str
    tenant_id: str
    refresh_token: str
    refresh_expires: float
    revoked: bool = False


# --- one tenant's data ---------------------------------------------------------------------------------
class Tenant:
    """Everything one tenant owns; every lookup is scoped to it (another tenant's id is 404)."""

    def __init__(self, id: str, slug: str, name: str, currency: str, timezone: str, rng: random.Random,
                 clock: Callable[[], datetime]) -> None:
        self.id, self.slug, self.name, self.currency, self.timezone = id, slug, name, currency, timezone
        self.rng = rng
        self.clock = clock
        self.users: dict[str, User] = {}
        self.stores: dict[str, Store] = {}
        self.categories: dict[str, Category] = {}
        self.products: dict[str, Product] = {}
        self.stock: dict[tuple[str, str, str | None], StockRow] = {}
        self.movements: list[Movement] = []
        self.groups: dict[str, Group] = {}
        self.customers: dict[str, Customer] = {}
        self.sales: dict[str, Sale] = {}
        self.payments: dict[str, Payment] = {}
        self.loyalty_program = {"isActive": True, "pointsPerUnit": Decimal("0.1"), "unitValue": Decimal("0.05"),
                                "minRedeemPoints": 100}
        self.invoice_seq = 0

    # ids and time
    def new_id(self) -> str:
        """A UUID (v4 layout) from the tenant's seeded RNG: the same seed gives the same ids."""
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def now(self) -> datetime:
        """The time stamped on a change (the store's clock)."""
        return self.clock()

    # lookups (404 across tenants)
    def get(self, kind: str, table: dict[str, Any], key: str) -> Any:
        """A live record of this tenant by id, else 404 ``NOT_FOUND`` (another tenant's id too)."""
        found = table.get(key)
        if found is None or getattr(found, "deleted_at", None) is not None:
            raise Fail(404, "NOT_FOUND", f"{kind} not found")
        return found

    def sku_taken(self, sku: str, *, product: str | None = None, variant: str | None = None) -> bool:
        """Whether a live product or variant other than the given one has ``sku``."""
        for p in self.products.values():
            if p.deleted_at is not None:
                continue
            if p.sku == sku and p.id != product:
                return True
            if any(v.sku == sku and v.id != variant for v in p.live_variants()):
                return True
        return False

    # catalog
    def product_wire(self, product: Product) -> dict[str, Any]:
        """A product as the API answers it, with its category and live variants."""
        category = self.categories.get(product.category_id or "")
        return {"id": product.id, "name": product.name, "sku": product.sku, "barcode": product.barcode,
                "description": product.description, "categoryId": product.category_id,
                "category": None if category is None else {"id": category.id, "name": category.name},
                "unit": product.unit, "costPrice": product.cost_price, "sellingPrice": product.selling_price,
                "taxRate": product.tax_rate, "trackInventory": product.track_inventory, "isActive": product.active,
                "variants": [v.wire() for v in product.live_variants()], "createdAt": product.created_at,
                "updatedAt": product.updated_at}

    def stock_keys(self, product: Product) -> list[str | None]:
        """The variant ids stock is kept under: each live variant, or ``None`` without variants."""
        return [v.id for v in product.live_variants()] or [None]

    def ensure_stock(self, product: Product, at: datetime) -> None:
        """A zero stock row in every store for every stock key of ``product`` that has none."""
        for store in self.stores.values():
            for key in self.stock_keys(product):
                if (store.id, product.id, key) not in self.stock:
                    self.stock[(store.id, product.id, key)] = StockRow(self.new_id(), store.id, product.id, key, ZERO,
                                                                       None, at)

    def create_product(self, body: ProductBody, *, at: datetime | None = None) -> Product:
        """Create a product and its variants, with zero stock rows in every store.

        Raises:
            Fail: 409 ``DUPLICATE_SKU`` (a live product or variant has one of the SKUs), 404 for
                an unknown category."""
        at = at or self.now()
        skus = [body.sku, *[v.sku for v in body.variants]]
        if len(set(skus)) != len(skus) or any(self.sku_taken(s) for s in skus):
            raise Fail(409, "DUPLICATE_SKU", "A product or variant with this SKU already exists")
        if body.categoryId is not None:
            self.get("Category", self.categories, body.categoryId)
        product = Product(self.new_id(), body.name, body.sku, body.barcode, body.description, body.categoryId,
                          body.unit, money(body.costPrice), money(body.sellingPrice), body.taxRate,
                          body.trackInventory, body.isActive, at, at)
        for v in body.variants:
            product.variants.append(self._variant(v, at))
        self.products[product.id] = product
        self.ensure_stock(product, at)
        return product

    def _variant(self, v: VariantBody, at: datetime) -> Variant:
        return Variant(self.new_id(), v.name, v.sku, v.barcode, dict(v.attributes),
                       None if v.costPrice is None else money(v.costPrice),
                       None if v.sellingPrice is None else money(v.sellingPrice), v.isActive, at, at)

    # stock
    def stock_row(self, store_id: str, product_id: str, variant_id: str | None) -> StockRow:
        """The stock row of (store, product, variant), made on demand.

        Raises:
            Fail: 404 for an unknown store, product or variant; 400 when a product with variants
                is named without one."""
        self.get("Store", self.stores, store_id)
        product = self.get("Product", self.products, product_id)
        if variant_id is not None and product.variant(variant_id) is None:
            raise Fail(404, "NOT_FOUND", "Variant not found")
        if variant_id is None and product.live_variants():
            raise Fail(400, "VALIDATION_ERROR", "Validation failed",
                       [{"code": "custom", "path": ["variantId"], "message": "variantId is required for a product with variants"}])
        row = self.stock.get((store_id, product_id, variant_id))
        if row is None:
            self.ensure_stock(product, self.now())
            row = self.stock[(store_id, product_id, variant_id)]
        return row

    def move(self, row: StockRow, kind: str, delta: Decimal, *, reason: str | None = None, note: str | None = None,
             reference: str | None = None, user_id: str | None = None, allow_negative: bool = False) -> Movement:
        """Apply ``delta`` to ``row`` and record the movement (422 ``INSUFFICIENT_STOCK`` below zero)."""
        after = row.quantity + delta
        if after < 0 and not allow_negative:
            raise Fail(422, "INSUFFICIENT_STOCK",
                       f"Insufficient stock: {dec(row.quantity)} available, {dec(-delta)} requested")
        at = self.now()
        row.quantity, row.updated_at = after, at
        movement = Movement(self.new_id(), len(self.movements) + 1, row.id, row.store_id, row.product_id,
                            row.variant_id, kind, delta, after, reason, note, reference, user_id, at)
        self.movements.append(movement)
        return movement

    # customers
    def customer_wire(self, customer: Customer) -> dict[str, Any]:
        """A customer as the API answers it, with its group."""
        group = self.groups.get(customer.group_id or "")
        return {"id": customer.id, "name": customer.name, "email": customer.email, "phone": customer.phone,
                "address": customer.address, "groupId": customer.group_id,
                "group": None if group is None else {"id": group.id, "name": group.name,
                                                     "discountPercent": group.discount_percent},
                "creditLimit": customer.credit_limit, "balance": customer.balance,
                "loyaltyPoints": customer.loyalty_points, "createdAt": customer.created_at,
                "updatedAt": customer.updated_at}

    def add_loyalty(self, customer: Customer, points: int, reason: str, at: datetime, sale_id: str | None = None) -> None:
        """Add (or with a negative ``points`` take) whole loyalty points and log it; 422
        ``INSUFFICIENT_POINTS`` below zero."""
        if customer.loyalty_points + points < 0:
            raise Fail(422, "INSUFFICIENT_POINTS", "Not enough loyalty points")
        customer.loyalty_points += points
        customer.updated_at = at
        customer.loyalty.append({"id": self.new_id(), "points": points, "balanceAfter": customer.loyalty_points,
                                 "reason": reason, "saleId": sale_id, "createdAt": at})

    # sales
    def checkout(self, body: CheckoutBody, user: User) -> Sale:
        """Process a checkout (doc "Sales": ``POST /checkout``): price the lines, take the
        stock, record the tenders and earn loyalty points. Money in the tenant's currency.

        Raises:
            Fail: 404 (unknown store, customer, product, variant), 400 (variant missing, a
                discount above its line), 422 ``INSUFFICIENT_STOCK``, ``OVERPAYMENT``,
                ``PAYMENT_REQUIRED``, ``CREDIT_LIMIT_EXCEEDED``."""
        self.get("Store", self.stores, body.storeId)
        customer = self.get("Customer", self.customers, body.customerId) if body.customerId else None
        at = self.now()
        items: list[SaleItem] = []
        rows: list[tuple[StockRow | None, Decimal]] = []
        for n, item in enumerate(body.items):
            product = self.get("Product", self.products, item.productId)
            variant = product.variant(item.variantId) if item.variantId else None
            if item.variantId and variant is None:
                raise Fail(404, "NOT_FOUND", "Variant not found")
            if variant is None and product.live_variants():
                raise Fail(400, "VALIDATION_ERROR", "Validation failed", [
                    {"code": "custom", "path": ["items", n, "variantId"], "message": "variantId is required"}])
            catalog = (variant.selling_price if variant and variant.selling_price is not None else product.selling_price)
            price = money(item.unitPrice) if item.unitPrice is not None else catalog
            gross = money(item.quantity * price)
            discount = money(item.discount)
            if discount > gross:
                raise Fail(400, "VALIDATION_ERROR", "Validation failed", [
                    {"code": "custom", "path": ["items", n, "discount"], "message": "discount exceeds the line amount"}])
            tax = money((gross - discount) * product.tax_rate / 100)
            items.append(SaleItem(self.new_id(), product.id, variant.id if variant else None,
                                  f"{product.name} - {variant.name}" if variant else product.name,
                                  variant.sku if variant else product.sku, qty(item.quantity), price, discount,
                                  product.tax_rate, tax, gross - discount + tax))
            row = self.stock_row(body.storeId, product.id, variant.id if variant else None) \
                if product.track_inventory else None
            rows.append((row, qty(item.quantity)))
        needed: dict[str, Decimal] = {}
        for row, amount in rows:
            if row is not None:
                needed[row.id] = needed.get(row.id, ZERO) + amount
                if row.quantity < needed[row.id]:
                    raise Fail(422, "INSUFFICIENT_STOCK",
                               f"Insufficient stock for {row.product_id}: {dec(row.quantity)} available")
        subtotal = sum((money(i.quantity * i.unit_price) for i in items), ZERO)
        discount_total = sum((i.discount for i in items), ZERO)
        tax_total = sum((i.tax_amount for i in items), ZERO)
        total = subtotal - discount_total + tax_total
        tendered = sum((money(p.amount) for p in body.payments), ZERO)
        cash = sum((money(p.amount) for p in body.payments if p.method == "CASH"), ZERO)
        change = min(max(tendered - total, ZERO), cash)
        if tendered - change > total:
            raise Fail(422, "OVERPAYMENT", "Only cash can be tendered above the total")
        due = total - (tendered - change)
        if due > 0:
            if customer is None:
                raise Fail(422, "PAYMENT_REQUIRED", "A sale with an amount due needs a customer")
            if customer.credit_limit is not None and customer.balance + due > customer.credit_limit:
                raise Fail(422, "CREDIT_LIMIT_EXCEEDED", "The sale exceeds the customer's credit limit")
        self.invoice_seq += 1
        sale = Sale(self.new_id(), f"INV-{self.invoice_seq:06d}", body.storeId, customer.id if customer else None,
                    user.id, items, [], subtotal, discount_total, tax_total, total, change, "COMPLETED", body.note,
                    body.reference, at, at)
        for p in body.payments:
            payment = Payment(self.new_id(), sale.id, sale.customer_id, p.method, money(p.amount), p.reference, at)
            sale.payments.append(payment)
            self.payments[payment.id] = payment
        for (row, amount), item in zip(rows, items, strict=True):
            if row is not None:
                self.move(row, "SALE", -amount, reference=sale.invoice_number, user_id=user.id, note=item.name)
        if customer is not None:
            customer.balance += due
            customer.updated_at = at
            points = int((total * self.loyalty_program["pointsPerUnit"]).to_integral_value(rounding="ROUND_FLOOR"))
            if points:
                self.add_loyalty(customer, points, f"Earned on {sale.invoice_number}", at, sale.id)
        self.sales[sale.id] = sale
        return sale

    def void(self, sale: Sale, reason: str | None, user: User) -> Sale:
        """Void a completed sale: restock its items, cancel what the customer owed.

        Raises:
            Fail: 422 ``SALE_NOT_VOIDABLE`` unless the sale is ``COMPLETED``."""
        if sale.status != "COMPLETED":
            raise Fail(422, "SALE_NOT_VOIDABLE", f"A {sale.status.lower()} sale cannot be voided")
        at = self.now()
        due = sale.due
        for item in sale.items:
            product = self.products.get(item.product_id)
            if product is not None and product.track_inventory:
                row = self.stock.get((sale.store_id, item.product_id, item.variant_id))
                if row is not None:
                    self.move(row, "VOID", item.quantity, reference=sale.invoice_number, user_id=user.id, note=reason)
        sale.status, sale.void_reason, sale.voided_at, sale.updated_at = "VOIDED", reason, at, at
        if sale.customer_id and sale.customer_id in self.customers:
            customer = self.customers[sale.customer_id]
            customer.balance -= due
            customer.updated_at = at
        return sale

    def return_sale(self, sale: Sale, body: ReturnBody, user: User) -> Sale:
        """Return items of a sale (all that is left when ``body.items`` is omitted),
        restocking them unless ``restock`` is false.

        Raises:
            Fail: 400 (an item not of this sale), 422 ``SALE_NOT_RETURNABLE``, ``RETURN_EXCEEDS_SALE``."""
        if sale.status not in ("COMPLETED", "PARTIALLY_RETURNED"):
            raise Fail(422, "SALE_NOT_RETURNABLE", f"A {sale.status.lower()} sale cannot be returned")
        by_id = {i.id: i for i in sale.items}
        wanted: dict[str, Decimal] = {}
        if body.items is None:
            wanted = {i.id: i.quantity - i.returned_quantity for i in sale.items if i.quantity > i.returned_quantity}
        else:
            for n, item in enumerate(body.items):
                if item.saleItemId not in by_id:
                    raise Fail(400, "VALIDATION_ERROR", "Validation failed", [
                        {"code": "custom", "path": ["items", n, "saleItemId"], "message": "Not an item of this sale"}])
                wanted[item.saleItemId] = wanted.get(item.saleItemId, ZERO) + qty(item.quantity)
        for item_id, amount in wanted.items():
            line = by_id[item_id]
            if line.returned_quantity + amount > line.quantity:
                raise Fail(422, "RETURN_EXCEEDS_SALE", "Return quantity exceeds the quantity sold")
        at = self.now()
        lines = []
        amount_total = ZERO
        for item_id, amount in wanted.items():
            line = by_id[item_id]
            value = money(line.total * amount / line.quantity)
            line.returned_quantity += amount
            amount_total += value
            lines.append({"saleItemId": item_id, "quantity": amount, "amount": value})
            product = self.products.get(line.product_id)
            if body.restock and product is not None and product.track_inventory:
                row = self.stock.get((sale.store_id, line.product_id, line.variant_id))
                if row is not None:
                    self.move(row, "RETURN", amount, reference=sale.invoice_number, user_id=user.id, note=body.reason)
        sale.returns.append({"id": self.new_id(), "items": lines, "amount": amount_total, "reason": body.reason,
                             "restock": body.restock, "createdAt": at})
        whole = all(i.returned_quantity >= i.quantity for i in sale.items)
        sale.status = "RETURNED" if whole else "PARTIALLY_RETURNED"
        sale.updated_at = at
        return sale


# --- the multi-tenant store ------------------------------------------------------------------------------
CATALOG = [
    ("Beverages", None), ("Hot Drinks", "Beverages"), ("Cold Drinks", "Beverages"), ("Bakery", None),
    ("Apparel", None), ("T-Shirts", "Apparel"),
]
ITEMS = [
    ("Espresso", "Hot Drinks", "2.50", "0.80"), ("Cappuccino", "Hot Drinks", "3.75", "1.10"),
    ("Green Tea", "Hot Drinks", "2.20", "0.40"), ("Iced Latte", "Cold Drinks", "4.25", "1.35"),
    ("Orange Juice", "Cold Drinks", "3.90", "1.60"), ("Croissant", "Bakery", "2.95", "0.90"),
    ("Bagel", "Bakery", "2.40", "0.70"), ("Blueberry Muffin", "Bakery", "3.10", "1.05"),
    ("Sourdough Loaf", "Bakery", "6.80", "2.10"), ("Mineral Water", "Cold Drinks", "1.50", "0.30"),
]
NAMES = ["Ana Souza", "Bilal Khan", "Chen Wei", "Dara Okafor", "Elif Yilmaz", "Farah Haddad", "Gustavo Lima",
         "Hana Sato", "Ivan Petrov", "Jade Martin", "Kofi Mensah", "Lina Berg"]


class TenantPOSStore:
    """Every tenant of the sandbox, the sessions, and the token knobs.

    Attributes:
        access_ttl, refresh_ttl: lifetimes (seconds) of the tokens issued; the doc says 900 and
            604800. ``advertised_ttl``: the ``expiresIn`` the login/refresh answers report
            (``None``: the real ``access_ttl``), so a test can make tokens die earlier than the
            client was told.
        token_clock: seconds since the epoch for token expiry (``time.time``; tests pass a fake).
        clock: the time stamped on changes (``updatedAt``, movements).
    """

    def __init__(self, *, seed: int = 0, access_ttl: int = ACCESS_TTL, refresh_ttl: int = REFRESH_TTL,
                 token_clock: Callable[[], float] = time.time, clock: Callable[[], datetime] | None = None) -> None:
        self.seed = seed
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self.advertised_ttl: int | None = None
        self.token_clock = token_clock
        self.clock = clock or (lambda: datetime.now(UTC))
        self.tenants: dict[str, Tenant] = {}
        self.sessions: dict[str, Session] = {}  # by refresh token
        self.access: dict[str, tuple[str, float]] = {}  # access token -> (session id, expires at)
        self.logins = 0
        self.refreshes = 0

    def add_tenant(self, slug: str, name: str, *, currency: str = "USD", timezone: str = "America/New_York",
                   seed: int = 0) -> Tenant:
        """Add a tenant with an ADMIN, a MANAGER and a CASHIER user (password ``sandbox-password``)."""
        rng = random.Random(f"{self.seed}:{seed}:{slug}")
        tenant = Tenant(str(uuid.UUID(int=rng.getrandbits(128), version=4)), slug, name, currency, timezone, rng,
                        lambda: self.clock())
        self.tenants[slug] = tenant
        for role in ("ADMIN", "MANAGER", "CASHIER"):
            user = User(tenant.new_id(), f"{role.lower()}@{slug}.test", f"{role.title()} of {name}", role,
                        DEFAULT_PASSWORD)
            tenant.users[user.id] = user
        return tenant

    def tenant_by_id(self, tenant_id: str) -> Tenant:
        """The tenant with id ``tenant_id``."""
        return next(t for t in self.tenants.values() if t.id == tenant_id)

    # -- tokens ------------------------------------------------------------------------------------------
    def _token(self, kind: str) -> str:
        return f"tp{kind}_{secrets.token_urlsafe(24)}"

    def issue(self, session: Session) -> dict[str, Any]:
        """A new access token of ``session`` and the token answer (``expiresIn`` in seconds)."""
        access = self._token("a")
        self.access[access] = (session.id, self.token_clock() + self.access_ttl)
        return {"accessToken": access, "refreshToken": session.refresh_token, "tokenType": "Bearer",
                "expiresIn": self.access_ttl if self.advertised_ttl is None else self.advertised_ttl,
                "refreshExpiresIn": self.refresh_ttl}

    def login(self, body: LoginBody) -> tuple[Tenant, User, dict[str, Any]]:
        """Check the credentials and open a session.

        Raises:
            Fail: 401 ``INVALID_CREDENTIALS``."""
        tenant = self.tenants.get(body.tenantSlug)
        user = None if tenant is None else next(
            (u for u in tenant.users.values() if u.email.lower() == body.email.lower() and u.active), None)
        if tenant is None or user is None or not secrets.compare_digest(user.password, body.password):
            raise Fail(401, "INVALID_CREDENTIALS", "Invalid email, password or tenant")
        session = Session(self._token("s"), user.id, tenant.id, self._token("r"),
                          self.token_clock() + self.refresh_ttl)
        self.sessions[session.refresh_token] = session
        self.logins += 1
        return tenant, user, self.issue(session)

    def refresh(self, token: str) -> dict[str, Any]:
        """Rotate: the old refresh token is revoked and a new one issued with a fresh 7 days."""
        session = self.sessions.get(token)
        if session is None or session.revoked or self.token_clock() >= session.refresh_expires:
            raise Fail(401, "INVALID_REFRESH_TOKEN", "Refresh token is invalid or expired")
        session.revoked = True
        fresh = Session(session.id, session.user_id, session.tenant_id, self._token("r"),
                        self.token_clock() + self.refresh_ttl)
        self.sessions[fresh.refresh_token] = fresh
        self.refreshes += 1
        return self.issue(fresh)

    def authenticate(self, header: str | None) -> tuple[Tenant, User, Session]:
        """The tenant, user and session of a bearer header.

        Raises:
            Fail: 401 ``UNAUTHORIZED`` or ``TOKEN_EXPIRED``."""
        if not header or not header.startswith("Bearer "):
            raise Fail(401, "UNAUTHORIZED", "Missing access token")
        found = self.access.get(header[7:].strip())
        if found is None:
            raise Fail(401, "UNAUTHORIZED", "Invalid access token")
        session_id, expires = found
        if self.token_clock() >= expires:
            raise Fail(401, "TOKEN_EXPIRED", "Access token expired")
        session = next((s for s in self.sessions.values() if s.id == session_id and not s.revoked), None)
        if session is None:
            raise Fail(401, "UNAUTHORIZED", "Session revoked")
        tenant = self.tenant_by_id(session.tenant_id)
        user = tenant.users.get(session.user_id)
        if user is None or not user.active:
            raise Fail(401, "UNAUTHORIZED", "User inactive")
        return tenant, user, session

    def revoke(self, session_id: str) -> None:
        """Revoke a session: its refresh tokens and its access tokens."""
        for session in self.sessions.values():
            if session.id == session_id:
                session.revoked = True
        for token in [t for t, (sid, _) in self.access.items() if sid == session_id]:
            del self.access[token]

    def revoke_user(self, user_id: str) -> None:
        """Revoke every session of a user (logout-all, password change)."""
        for session in list(self.sessions.values()):
            if session.user_id == user_id:
                self.revoke(session.id)

    def expire_access_tokens(self) -> int:
        """Every access token issued so far dies now (the refresh tokens live on)."""
        count = len(self.access)
        now = self.token_clock()
        self.access = {t: (sid, now) for t, (sid, _) in self.access.items()}
        return count

    # -- seeding -----------------------------------------------------------------------------------------
    def seed_tenant(self, tenant: Tenant, *, products: int, customers: int, sales: int, stores: int,
                    variant_every: int = 4) -> None:
        """Synthetic data at fixed times from :data:`SEEDED_AT`: stores, a category tree, products
        (every ``variant_every``-th with S/M/L variants), stock, groups, customers and sales."""
        rng = tenant.rng
        at = SEEDED_AT
        for n in range(stores):
            store = Store(tenant.new_id(), "Main Street" if n == 0 else f"Branch {n + 1}", f"S{n + 1:02d}",
                          f"{10 + n} Market Square", f"+1555010{n:04d}", tenant.timezone, at, at)
            tenant.stores[store.id] = store
        by_name: dict[str, str] = {}
        for name, parent in CATALOG:
            category = Category(tenant.new_id(), name, by_name.get(parent or ""), at, at)
            tenant.categories[category.id] = category
            by_name[name] = category.id
        for n in range(products):
            at = SEEDED_AT + timedelta(minutes=n)
            base, category, price, cost = ITEMS[n % len(ITEMS)]
            name = base if n < len(ITEMS) else f"{base} #{n // len(ITEMS) + 1}"
            variants = []
            if variant_every and n % variant_every == variant_every - 1:
                variants = [VariantBody(name=size, sku=f"{tenant.slug[:3].upper()}-{n + 1:05d}-{size}",
                                        barcode=_ean13(n * 10 + k), attributes={"size": size},
                                        sellingPrice=money(Decimal(price) + k) if k else None)
                            for k, size in enumerate(("S", "M", "L"))]
            body = ProductBody(name=name, sku=f"{tenant.slug[:3].upper()}-{n + 1:05d}", barcode=_ean13(n * 10 + 9),
                               categoryId=by_name[category], costPrice=Decimal(cost), sellingPrice=Decimal(price),
                               taxRate=Decimal("8.25") if n % 3 else ZERO, unit="kg" if n % 7 == 6 else "pcs",
                               description=f"{name}, freshly stocked", variants=variants)
            product = tenant.create_product(body, at=at)
            for key in tenant.stock_keys(product):
                for store in tenant.stores.values():
                    row = tenant.stock[(store.id, product.id, key)]
                    amount = Decimal(rng.randint(5, 60)) + (Decimal(rng.randint(0, 999)) / 1000 if product.unit == "kg" else 0)
                    row.quantity, row.updated_at = qty(amount), at
                    row.low_stock_threshold = Decimal(5) if rng.random() < 0.5 else None
                    tenant.movements.append(Movement(tenant.new_id(), len(tenant.movements) + 1, row.id, row.store_id,
                                                     row.product_id, row.variant_id, "PURCHASE", row.quantity,
                                                     row.quantity, "RESTOCK", "opening stock", None, None, at))
        for n, (name, discount) in enumerate((("Regular", "0"), ("VIP", "10"), ("Staff", "25"))):
            group = Group(tenant.new_id(), name, Decimal(discount), SEEDED_AT, SEEDED_AT)
            tenant.groups[group.id] = group
            del n
        groups = list(tenant.groups)
        for n in range(customers):
            at = SEEDED_AT + timedelta(hours=1, minutes=n)
            name = NAMES[n % len(NAMES)] if n < len(NAMES) else f"{NAMES[n % len(NAMES)]} {n // len(NAMES) + 1}"
            handle = name.lower().replace(" ", ".")
            customer = Customer(tenant.new_id(), name, f"{handle}@example.com", f"+1555020{n:04d}",
                                f"{100 + n} Elm Street, Springfield" if n % 2 == 0 else None, groups[n % len(groups)],
                                Decimal(500) if n % 3 == 0 else None, ZERO, 0, at, at)
            tenant.customers[customer.id] = customer
        admin = next(u for u in tenant.users.values() if u.role == "ADMIN")
        store_ids = list(tenant.stores)
        customer_ids = list(tenant.customers)
        product_list = list(tenant.products.values())
        for n in range(sales):
            moment = SEEDED_AT + timedelta(days=1, hours=n)
            self.clock, saved = (lambda m=moment: m), self.clock
            try:
                picks = rng.sample(product_list, min(len(product_list), rng.randint(1, 3)))
                items = [CheckoutItem(productId=p.id, variantId=p.live_variants()[0].id if p.live_variants() else None,
                                      quantity=Decimal(rng.randint(1, 2)),
                                      discount=Decimal("0.50") if rng.random() < 0.2 else ZERO) for p in picks]
                draft = CheckoutBody(storeId=rng.choice(store_ids), customerId=rng.choice(customer_ids)
                                     if customer_ids and rng.random() < 0.7 else None, items=items)
                total = self._quote(tenant, draft)
                method = rng.choice(["CASH", "CARD", "MOBILE"])
                draft.payments = [CheckoutPayment(method=method, amount=total)]
                sale = tenant.checkout(draft, admin)
                if n % 5 == 3:
                    tenant.void(sale, "Customer changed their mind", admin)
                elif n % 5 == 4:
                    tenant.return_sale(sale, ReturnBody(items=[ReturnItem(saleItemId=sale.items[0].id,
                                                                          quantity=Decimal(1))], reason="Damaged"),
                                       admin)
            finally:
                self.clock = saved

    @staticmethod
    def _quote(tenant: Tenant, body: CheckoutBody) -> Decimal:
        """The total a checkout of ``body`` would come to (for seeding paid sales)."""
        total = ZERO
        for item in body.items:
            product = tenant.products[item.productId]
            variant = product.variant(item.variantId)
            price = variant.selling_price if variant and variant.selling_price is not None else product.selling_price
            gross = money(item.quantity * price)
            total += gross - item.discount + money((gross - item.discount) * product.tax_rate / 100)
        return total

    def seed_retail(self, tenant: Tenant, rows: Iterable[RetailRow], max_products: int | None) -> None:
        """One product per StockCode of a UCI Online Retail CSV (SKU = StockCode, the most common
        description and unit price), stocked in every store; one customer per CustomerID."""
        names: dict[str, str] = {}
        prices: dict[str, Decimal] = {}
        customers: dict[int, str] = {}
        for row in rows:
            if row.stock_code not in names and (max_products is None or len(names) < max_products):
                names[row.stock_code] = row.description or row.stock_code
                prices[row.stock_code] = money(row.unit_price) if row.unit_price > 0 else Decimal("1.00")
            if row.customer_id is not None:
                customers.setdefault(row.customer_id, row.country)
        for n, (code, name) in enumerate(names.items()):
            if tenant.sku_taken(code):
                continue
            product = tenant.create_product(ProductBody(name=name[:200], sku=code[:64], sellingPrice=prices[code],
                                                        costPrice=money(prices[code] * Decimal("0.6"))),
                                            at=SEEDED_AT + timedelta(seconds=n))
            for row in tenant.stock.values():
                if row.product_id == product.id:
                    row.quantity = Decimal(tenant.rng.randint(0, 100))
        for n, (cid, country) in enumerate(sorted(customers.items())):
            at = SEEDED_AT + timedelta(seconds=n)
            customer = Customer(tenant.new_id(), f"Customer {cid}", None, None, country, None, None, ZERO, 0, at, at)
            tenant.customers[customer.id] = customer


def _ean13(number: int) -> str:
    body = f"200{number:09d}"
    check = (10 - sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body)) % 10) % 10
    return body + str(check)


# --- HTTP layer -------------------------------------------------------------------------------------------
def _page_args(request: Request) -> tuple[int, int]:
    try:
        page = int(request.query_params.get("page", "1"))
        limit = int(request.query_params.get("limit", str(DEFAULT_LIMIT)))
    except ValueError:
        raise Fail(400, "VALIDATION_ERROR", "Validation failed",
                   [{"code": "invalid_type", "path": ["page"], "message": "Expected number"}]) from None
    if page < 1 or not 1 <= limit <= MAX_LIMIT:
        raise Fail(400, "VALIDATION_ERROR", "Validation failed",
                   [{"code": "too_big" if limit > MAX_LIMIT else "too_small",
                     "path": ["limit" if not 1 <= limit <= MAX_LIMIT else "page"],
                     "message": f"limit must be between 1 and {MAX_LIMIT}"}])
    return page, limit


def _paged(request: Request, items: list[Any], render: Callable[[Any], Any]) -> Response:
    page, limit = _page_args(request)
    start = (page - 1) * limit
    chunk = items[start:start + limit]
    return ok([render(i) for i in chunk], meta={"page": page, "limit": limit, "total": len(items),
                                                "totalPages": max(1, -(-len(items) // limit))})


def _since(request: Request, name: str = "since") -> datetime | None:
    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Fail(400, "VALIDATION_ERROR", "Validation failed",
                   [{"code": "invalid_string", "path": [name], "message": "Invalid datetime"}]) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def create_app(
    *,
    seed_csv: str | Path | None = None,
    products: int | None = None,
    customers: int | None = None,
    sales: int | None = None,
    stores: int = 2,
    seed: int = 0,
    faults: Faults | dict[str, Any] | None = None,
    access_ttl: int = ACCESS_TTL,
    refresh_ttl: int = REFRESH_TTL,
    token_clock: Callable[[], float] = time.time,
    clock: Callable[[], datetime] | None = None,
    other_tenant: bool = True,
    variant_every: int = 4,
) -> Starlette:
    """Build a TenantPOS sandbox app (``tillgate sandbox tenantpos``).

    Options:

    - ``seed_csv``: a UCI Online Retail CSV loaded into tenant ``demo`` (products by StockCode,
      customers by CustomerID); ``products`` caps how many StockCodes.
    - ``products`` (default 40), ``customers`` (default 12), ``sales`` (default 8): synthetic
      data of tenant ``demo`` (every 4th product has variants S/M/L; some sales are voided or
      partly returned).
    - ``stores``: stores per tenant (default 2).
    - ``seed``: RNG seed for ids, stock and the fault knobs.
    - ``faults``: initial fault knobs (:class:`~gateway.testing.sandbox.Faults` or a dict).
    - ``access_ttl`` / ``refresh_ttl``: token lifetimes in seconds (900 / 604800 as documented).
    - ``token_clock``: seconds since the epoch for token expiry; ``clock``: the time of changes.
    - ``variant_every``: every N-th synthetic product has variants S/M/L (0: none).
    - ``other_tenant``: also seed tenant ``acme`` (3 products, 2 customers) to show isolation.

    Logins: ``admin@demo.test`` / ``manager@demo.test`` / ``cashier@demo.test`` with password
    ``sandbox-password`` and ``tenantSlug`` ``demo`` (likewise ``@acme.test``).
    ``app.state.tenantpos`` is the :class:`TenantPOSStore`, ``app.state.sandbox`` the fault state.
    """
    db = TenantPOSStore(seed=seed, access_ttl=access_ttl, refresh_ttl=refresh_ttl, token_clock=token_clock,
                        clock=clock)
    demo = db.add_tenant("demo", "Demo Coffee Co.")
    if seed_csv is not None:
        db.seed_tenant(demo, products=0, customers=0, sales=0, stores=stores)
        db.seed_retail(demo, read_retail_csv(seed_csv), products)
    else:
        db.seed_tenant(demo, products=40 if products is None else products,
                       customers=12 if customers is None else customers, sales=8 if sales is None else sales,
                       stores=stores, variant_every=variant_every)
    if other_tenant:
        acme = db.add_tenant("acme", "Acme Apparel", currency="EUR", timezone="Europe/Berlin")
        db.seed_tenant(acme, products=3, customers=2, sales=0, stores=1)

    sandbox = Sandbox(seed=seed, faults=faults, error_response=_error_response,
                      rate_limit_exempt={f"{BASE_PATH}/auth/login", f"{BASE_PATH}/auth/refresh"},
                      state_extra=lambda: {"tenantpos": {
                          "tenants": {s: {"products": len(t.products), "customers": len(t.customers),
                                          "sales": len(t.sales), "movements": len(t.movements)}
                                      for s, t in db.tenants.items()},
                          "logins": db.logins, "refreshes": db.refreshes,
                          "access_ttl": db.access_ttl, "refresh_ttl": db.refresh_ttl,
                          "advertised_ttl": db.advertised_ttl}})

    def route(path: str, methods: list[str], permission: str | None = None, *, auth: bool = True,
              status: int = 200) -> Callable[[Callable[..., Any]], Route]:
        """Wrap a handler ``(request, tenant, user, session, body) -> data | Response`` with auth,
        the permission check, JSON body parsing and the error envelope."""

        def wrap(handler: Callable[..., Any]) -> Route:
            async def endpoint(request: Request) -> Response:
                try:
                    tenant = user = session = None
                    if auth:
                        tenant, user, session = db.authenticate(request.headers.get("authorization"))
                        if permission and not user.can(permission):
                            raise Fail(403, "FORBIDDEN", f"Missing permission {permission}")
                    body: Any = None
                    if request.method in ("POST", "PATCH", "PUT"):
                        raw = await request.body()
                        if raw:
                            try:
                                body = orjson.loads(raw)
                            except orjson.JSONDecodeError:
                                raise Fail(400, "INVALID_JSON", "Malformed JSON body") from None
                        else:
                            body = {}
                    result = handler(request, tenant, user, session, body)
                    return result if isinstance(result, Response) else ok(result, status)
                except Fail as fail:
                    return fail.response()
                except (InvalidOperation, ValueError) as exc:
                    return Fail(400, "VALIDATION_ERROR", "Validation failed",
                                [{"code": "custom", "path": [], "message": str(exc)[:200]}]).response()

            return Route(path, endpoint, methods=methods)

        return wrap

    routes: list[Route] = []

    def add(path: str, methods: list[str], permission: str | None = None, **kw: Any) -> Callable[[Callable[..., Any]], Any]:
        def deco(handler: Callable[..., Any]) -> Callable[..., Any]:
            routes.append(route(path, methods, permission, **kw)(handler))
            return handler
        return deco

    # -- auth ----------------------------------------------------------------------------------------------
    @add(f"{BASE_PATH}/auth/login", ["POST"], auth=False)
    def login(request, tenant, user, session, body):
        """Check the credentials and open a session.

        Raises:
            Fail: 401 ``INVALID_CREDENTIALS``."""
        tenant, user, tokens = db.login(parse(LoginBody, body))
        return {**tokens, "user": {"id": user.id, "email": user.email, "name": user.name, "role": user.role,
                                   "tenantId": tenant.id, "tenantSlug": tenant.slug}}

    @add(f"{BASE_PATH}/auth/refresh", ["POST"], auth=False)
    def refresh(request, tenant, user, session, body):
        return db.refresh(parse(RefreshBody, body).refreshToken)

    @add(f"{BASE_PATH}/auth/logout", ["POST"])
    def logout(request, tenant, user, session, body):
        given = parse(LogoutBody, body).refreshToken
        target = db.sessions.get(given) if given else session
        if target is not None and target.user_id == user.id:
            db.revoke(target.id)
        return {"loggedOut": True}

    @add(f"{BASE_PATH}/auth/logout-all", ["POST"])
    def logout_all(request, tenant, user, session, body):
        db.revoke_user(user.id)
        return {"loggedOut": True}

    @add(f"{BASE_PATH}/auth/me", ["GET"])
    def me(request, tenant, user, session, body):
        return {"id": user.id, "email": user.email, "name": user.name, "role": user.role, "tenantId": tenant.id,
                "tenantSlug": tenant.slug, "tenantName": tenant.name, "currency": tenant.currency,
                "permissions": sorted(ROLE_PERMISSIONS[user.role])}

    @add(f"{BASE_PATH}/auth/change-password", ["PATCH"])
    def change_password(request, tenant, user, session, body):
        data = parse(ChangePasswordBody, body)
        if not secrets.compare_digest(user.password, data.currentPassword):
            raise Fail(400, "VALIDATION_ERROR", "Validation failed",
                       [{"code": "custom", "path": ["currentPassword"], "message": "Current password is wrong"}])
        user.password = data.newPassword
        db.revoke_user(user.id)
        return {"changed": True}

    # -- categories (before /products/:id) -------------------------------------------------------------------
    P = f"{V1}/products"

    @add(f"{P}/categories", ["GET"], "category:read")
    def list_categories(request, tenant, user, session, body):
        live = sorted((c for c in tenant.categories.values() if c.deleted_at is None),
                      key=lambda c: c.created_at)
        if request.query_params.get("flat") in ("true", "1"):
            return [c.wire() for c in live]

        def node(c: Category) -> dict[str, Any]:
            return {**c.wire(), "children": [node(k) for k in live if k.parent_id == c.id]}

        return [node(c) for c in live if c.parent_id is None or c.parent_id not in tenant.categories]

    @add(f"{P}/categories", ["POST"], "category:write", status=201)
    def create_category(request, tenant, user, session, body):
        data = parse(CategoryBody, body)
        if data.parentId is not None:
            tenant.get("Category", tenant.categories, data.parentId)
        at = tenant.now()
        category = Category(tenant.new_id(), data.name, data.parentId, at, at)
        tenant.categories[category.id] = category
        return category.wire()

    @add(f"{P}/categories/{{id}}", ["GET"], "category:read")
    def get_category(request, tenant, user, session, body):
        return tenant.get("Category", tenant.categories, request.path_params["id"]).wire()

    @add(f"{P}/categories/{{id}}", ["PATCH"], "category:write")
    def patch_category(request, tenant, user, session, body):
        category = tenant.get("Category", tenant.categories, request.path_params["id"])
        data = parse(CategoryBody, {"name": category.name, "parentId": category.parent_id, **(body or {})})
        if "parentId" in body:
            parent = data.parentId
            while parent is not None:  # no cycles
                if parent == category.id:
                    raise Fail(422, "INVALID_PARENT", "A category cannot be its own ancestor")
                parent = tenant.get("Category", tenant.categories, parent).parent_id
            category.parent_id = data.parentId
        category.name, category.updated_at = data.name, tenant.now()
        return category.wire()

    @add(f"{P}/categories/{{id}}", ["DELETE"], "category:write")
    def delete_category(request, tenant, user, session, body):
        category = tenant.get("Category", tenant.categories, request.path_params["id"])
        category.deleted_at = category.updated_at = tenant.now()
        return category.wire()

    # -- products ------------------------------------------------------------------------------------------
    def live_products(tenant: Tenant) -> list[Product]:
        return sorted((p for p in tenant.products.values() if p.deleted_at is None), key=lambda p: p.created_at)

    @add(P, ["GET"], "product:read")
    def list_products(request, tenant, user, session, body):
        items = live_products(tenant)
        search = request.query_params.get("search")
        if search:
            items = [p for p in items if search.lower() in p.name.lower() or search.lower() in p.sku.lower()]
        if request.query_params.get("categoryId"):
            items = [p for p in items if p.category_id == request.query_params["categoryId"]]
        return _paged(request, items, tenant.product_wire)

    @add(P, ["POST"], "product:write", status=201)
    def create_product(request, tenant, user, session, body):
        """Create a product and its variants, with zero stock rows in every store.

        Raises:
            Fail: 409 ``DUPLICATE_SKU`` (a live product or variant has one of the SKUs), 404 for
                an unknown category."""
        return tenant.product_wire(tenant.create_product(parse(ProductBody, body)))

    @add(f"{P}/bulk-import", ["POST"], "product:write", status=201)
    def bulk_import(request, tenant, user, session, body):
        rows = body.get("products") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not rows:
            raise Fail(400, "VALIDATION_ERROR", "Validation failed",
                       [{"code": "invalid_type", "path": ["products"], "message": "Expected array"}])
        created, failed = [], []
        for n, row in enumerate(rows):
            try:
                created.append(tenant.create_product(parse(ProductBody, row)).id)
            except Fail as fail:
                failed.append({"index": n, "code": fail.code, "message": fail.message, "details": fail.details})
        return {"created": len(created), "failed": failed, "ids": created}

    @add(f"{P}/lookup/barcode/{{barcode}}", ["GET"], "product:read")
    def lookup_barcode(request, tenant, user, session, body):
        code = request.path_params["barcode"]
        for product in live_products(tenant):
            if product.barcode == code:
                return {**tenant.product_wire(product), "matchedVariantId": None}
            for variant in product.live_variants():
                if variant.barcode == code:
                    return {**tenant.product_wire(product), "matchedVariantId": variant.id}
        raise Fail(404, "NOT_FOUND", "No product with this barcode")

    @add(f"{P}/{{id}}", ["GET"], "product:read")
    def get_product(request, tenant, user, session, body):
        return tenant.product_wire(tenant.get("Product", tenant.products, request.path_params["id"]))

    @add(f"{P}/{{id}}", ["PATCH"], "product:write")
    def patch_product(request, tenant, user, session, body):
        product = tenant.get("Product", tenant.products, request.path_params["id"])
        data = parse(ProductPatch, body)
        given = data.model_fields_set
        if "sku" in given and data.sku is not None and tenant.sku_taken(data.sku, product=product.id):
            raise Fail(409, "DUPLICATE_SKU", "A product or variant with this SKU already exists")
        if "categoryId" in given and data.categoryId is not None:
            tenant.get("Category", tenant.categories, data.categoryId)
        for name, attr in (("name", "name"), ("sku", "sku"), ("barcode", "barcode"), ("description", "description"),
                           ("categoryId", "category_id"), ("unit", "unit"), ("taxRate", "tax_rate"),
                           ("trackInventory", "track_inventory"), ("isActive", "active")):
            if name in given and (getattr(data, name) is not None or name in ("barcode", "description", "categoryId")):
                setattr(product, attr, getattr(data, name))
        for name, attr in (("costPrice", "cost_price"), ("sellingPrice", "selling_price")):
            if name in given and getattr(data, name) is not None:
                setattr(product, attr, money(getattr(data, name)))
        product.updated_at = tenant.now()
        return tenant.product_wire(product)

    @add(f"{P}/{{id}}", ["DELETE"], "product:write")
    def delete_product(request, tenant, user, session, body):
        product = tenant.get("Product", tenant.products, request.path_params["id"])
        product.deleted_at = product.updated_at = tenant.now()
        return {"id": product.id, "deletedAt": product.deleted_at}

    @add(f"{P}/{{id}}/variants", ["POST"], "product:write", status=201)
    def add_variant(request, tenant, user, session, body):
        product = tenant.get("Product", tenant.products, request.path_params["id"])
        data = parse(VariantBody, body)
        if tenant.sku_taken(data.sku):
            raise Fail(409, "DUPLICATE_SKU", "A product or variant with this SKU already exists")
        at = tenant.now()
        had_variants = bool(product.live_variants())
        variant = tenant._variant(data, at)
        product.variants.append(variant)
        product.updated_at = at
        if not had_variants:  # the product's own stock rows give way to per-variant rows
            for key in [k for k in tenant.stock if k[1] == product.id and k[2] is None]:
                del tenant.stock[key]
        tenant.ensure_stock(product, at)
        return variant.wire()

    @add(f"{P}/{{id}}/variants/{{variantId}}", ["PATCH"], "product:write")
    def patch_variant(request, tenant, user, session, body):
        product = tenant.get("Product", tenant.products, request.path_params["id"])
        variant = product.variant(request.path_params["variantId"])
        if variant is None:
            raise Fail(404, "NOT_FOUND", "Variant not found")
        data = parse(VariantPatch, body)
        if data.sku is not None and tenant.sku_taken(data.sku, variant=variant.id):
            raise Fail(409, "DUPLICATE_SKU", "A product or variant with this SKU already exists")
        for name, attr in (("name", "name"), ("sku", "sku"), ("barcode", "barcode"), ("attributes", "attributes"),
                           ("isActive", "active")):
            if name in data.model_fields_set and (getattr(data, name) is not None or name == "barcode"):
                setattr(variant, attr, getattr(data, name))
        for name, attr in (("costPrice", "cost_price"), ("sellingPrice", "selling_price")):
            if name in data.model_fields_set:
                value = getattr(data, name)
                setattr(variant, attr, None if value is None else money(value))
        variant.updated_at = product.updated_at = tenant.now()
        return variant.wire()

    @add(f"{P}/{{id}}/variants/{{variantId}}", ["DELETE"], "product:write")
    def delete_variant(request, tenant, user, session, body):
        product = tenant.get("Product", tenant.products, request.path_params["id"])
        variant = product.variant(request.path_params["variantId"])
        if variant is None:
            raise Fail(404, "NOT_FOUND", "Variant not found")
        variant.deleted_at = variant.updated_at = product.updated_at = tenant.now()
        return {"id": variant.id, "deletedAt": variant.deleted_at}

    # -- inventory -----------------------------------------------------------------------------------------
    I = f"{V1}/inventory"  # noqa: E741

    def stock_rows(request: Request, tenant: Tenant) -> list[StockRow]:
        q = request.query_params
        rows = [r for r in tenant.stock.values()
                if tenant.products.get(r.product_id) and tenant.products[r.product_id].deleted_at is None
                and (r.variant_id is None or tenant.products[r.product_id].variant(r.variant_id) is not None)]
        if q.get("storeId"):
            rows = [r for r in rows if r.store_id == q["storeId"]]
        if q.get("productId"):
            rows = [r for r in rows if r.product_id == q["productId"]]
        if "variantId" in q:
            rows = [r for r in rows if (r.variant_id or "") == q["variantId"]]
        return sorted(rows, key=lambda r: r.id)

    @add(f"{I}/stock", ["GET"], "inventory:read")
    def list_stock(request, tenant, user, session, body):
        return _paged(request, stock_rows(request, tenant), StockRow.wire)

    @add(f"{I}/stock/low", ["GET"], "inventory:read")
    def low_stock(request, tenant, user, session, body):
        rows = [r for r in stock_rows(request, tenant)
                if r.low_stock_threshold is not None and r.quantity <= r.low_stock_threshold]
        return _paged(request, rows, StockRow.wire)

    @add(f"{I}/stock/adjust", ["POST"], "inventory:write")
    def adjust(request, tenant, user, session, body):
        data = parse(AdjustBody, body)
        if data.quantity == 0:
            raise Fail(400, "VALIDATION_ERROR", "Validation failed",
                       [{"code": "custom", "path": ["quantity"], "message": "quantity must not be zero"}])
        row = tenant.stock_row(data.storeId, data.productId, data.variantId)
        movement = tenant.move(row, "ADJUSTMENT", qty(data.quantity), reason=data.reason, note=data.note,
                               reference=data.reference, user_id=user.id)
        return {"stock": row.wire(), "movement": movement.wire()}

    @add(f"{I}/stock/set", ["POST"], "inventory:write")
    def set_stock(request, tenant, user, session, body):
        data = parse(SetBody, body)
        row = tenant.stock_row(data.storeId, data.productId, data.variantId)
        delta = qty(data.quantity) - row.quantity
        movement = tenant.move(row, "SET", delta, reason=data.reason, note=data.note, reference=data.reference,
                               user_id=user.id)
        return {"stock": row.wire(), "movement": movement.wire()}

    @add(f"{I}/stock/{{storeId}}/{{productId}}/threshold", ["PATCH"], "inventory:write")
    def threshold(request, tenant, user, session, body):
        data = parse(ThresholdBody, body)
        row = tenant.stock_row(request.path_params["storeId"], request.path_params["productId"], data.variantId)
        row.low_stock_threshold = None if data.lowStockThreshold is None else qty(data.lowStockThreshold)
        row.updated_at = tenant.now()
        return row.wire()

    @add(f"{I}/movements", ["GET"], "inventory:read")
    def movements(request, tenant, user, session, body):
        q = request.query_params
        since = _since(request)
        items = tenant.movements
        if since is not None:
            items = [m for m in items if m.created_at >= since]
        for param, attr in (("storeId", "store_id"), ("productId", "product_id"), ("type", "type"),
                            ("reference", "reference")):
            if q.get(param):
                items = [m for m in items if getattr(m, attr) == q[param]]
        if "variantId" in q:
            items = [m for m in items if (m.variant_id or "") == q["variantId"]]
        return _paged(request, items, Movement.wire)

    # -- sales and payments --------------------------------------------------------------------------------
    S = f"{V1}/sales"

    @add(f"{S}/checkout", ["POST"], "sale:create", status=201)
    def checkout(request, tenant, user, session, body):
        """Process a checkout (doc "Sales": ``POST /checkout``): price the lines, take the
        stock, record the tenders and earn loyalty points. Money in the tenant's currency.

        Raises:
            Fail: 404 (unknown store, customer, product, variant), 400 (variant missing, a
                discount above its line), 422 ``INSUFFICIENT_STOCK``, ``OVERPAYMENT``,
                ``PAYMENT_REQUIRED``, ``CREDIT_LIMIT_EXCEEDED``."""
        return tenant.checkout(parse(CheckoutBody, body), user).wire()

    @add(S, ["GET"], "sale:read")
    def list_sales(request, tenant, user, session, body):
        items = sorted(tenant.sales.values(), key=lambda s: s.created_at)
        if request.query_params.get("status"):
            items = [s for s in items if s.status == request.query_params["status"]]
        return _paged(request, items, Sale.wire)

    @add(f"{S}/{{id}}", ["GET"], "sale:read")
    def get_sale(request, tenant, user, session, body):
        return tenant.get("Sale", tenant.sales, request.path_params["id"]).wire()

    @add(f"{S}/{{id}}/void", ["POST"], "sale:void")
    def void_sale(request, tenant, user, session, body):
        sale = tenant.get("Sale", tenant.sales, request.path_params["id"])
        return tenant.void(sale, parse(VoidBody, body).reason, user).wire()

    @add(f"{S}/{{id}}/return", ["POST"], "sale:return")
    def return_sale(request, tenant, user, session, body):
        """Return items of a sale (all that is left when ``body.items`` is omitted),
        restocking them unless ``restock`` is false.

        Raises:
            Fail: 400 (an item not of this sale), 422 ``SALE_NOT_RETURNABLE``, ``RETURN_EXCEEDS_SALE``."""
        sale = tenant.get("Sale", tenant.sales, request.path_params["id"])
        return tenant.return_sale(sale, parse(ReturnBody, body), user).wire()

    PAY = f"{V1}/payments"

    @add(PAY, ["GET"], "sale:read")
    def list_payments(request, tenant, user, session, body):
        return _paged(request, sorted(tenant.payments.values(), key=lambda p: p.created_at), Payment.wire)

    @add(f"{PAY}/collect-due", ["POST"], "sale:create", status=201)
    def collect_due(request, tenant, user, session, body):
        data = parse(CollectDueBody, body)
        sale = tenant.get("Sale", tenant.sales, data.saleId)
        if sale.status == "VOIDED" or data.amount > sale.due:
            raise Fail(422, "OVERPAYMENT", "The amount exceeds what is due on this sale")
        at = tenant.now()
        payment = Payment(tenant.new_id(), sale.id, sale.customer_id, data.method, money(data.amount), data.reference, at)
        sale.payments.append(payment)
        sale.updated_at = at
        tenant.payments[payment.id] = payment
        if sale.customer_id in tenant.customers:
            tenant.customers[sale.customer_id].balance -= payment.amount
            tenant.customers[sale.customer_id].updated_at = at
        return payment.wire()

    @add(f"{PAY}/customer/{{customerId}}", ["GET"], "customer:read")
    def customer_payments(request, tenant, user, session, body):
        customer = tenant.get("Customer", tenant.customers, request.path_params["customerId"])
        items = sorted((p for p in tenant.payments.values() if p.customer_id == customer.id),
                       key=lambda p: p.created_at)
        return _paged(request, items, Payment.wire)

    @add(f"{PAY}/{{id}}", ["GET"], "sale:read")
    def get_payment(request, tenant, user, session, body):
        return tenant.get("Payment", tenant.payments, request.path_params["id"]).wire()

    # -- customers -----------------------------------------------------------------------------------------
    C = f"{V1}/customers"

    @add(f"{C}/groups", ["GET"], "customer:read")
    def list_groups(request, tenant, user, session, body):
        return [g.wire() for g in sorted(tenant.groups.values(), key=lambda g: g.created_at)]

    @add(f"{C}/groups", ["POST"], "customer:write", status=201)
    def create_group(request, tenant, user, session, body):
        data = parse(GroupBody, body)
        at = tenant.now()
        group = Group(tenant.new_id(), data.name, data.discountPercent, at, at)
        tenant.groups[group.id] = group
        return group.wire()

    @add(f"{C}/groups/{{id}}", ["PATCH"], "customer:write")
    def patch_group(request, tenant, user, session, body):
        group = tenant.get("Group", tenant.groups, request.path_params["id"])
        data = parse(GroupBody, {"name": group.name, "discountPercent": group.discount_percent, **body})
        group.name, group.discount_percent, group.updated_at = data.name, data.discountPercent, tenant.now()
        return group.wire()

    @add(f"{C}/groups/{{id}}", ["DELETE"], "customer:write")
    def delete_group(request, tenant, user, session, body):
        group = tenant.get("Group", tenant.groups, request.path_params["id"])
        del tenant.groups[group.id]
        for customer in tenant.customers.values():
            if customer.group_id == group.id:
                customer.group_id, customer.updated_at = None, tenant.now()
        return {"id": group.id}

    @add(f"{C}/loyalty/program", ["GET"], "customer:read")
    def loyalty_program(request, tenant, user, session, body):
        return dict(tenant.loyalty_program)

    def live_customers(tenant: Tenant) -> list[Customer]:
        return sorted((c for c in tenant.customers.values() if c.deleted_at is None), key=lambda c: c.created_at)

    @add(C, ["GET"], "customer:read")
    def list_customers(request, tenant, user, session, body):
        items = live_customers(tenant)
        if request.query_params.get("groupId"):
            items = [c for c in items if c.group_id == request.query_params["groupId"]]
        search = (request.query_params.get("search") or "").lower()
        if search:
            items = [c for c in items if search in c.name.lower() or search in (c.email or "").lower()
                     or search in (c.phone or "")]
        return _paged(request, items, tenant.customer_wire)

    def check_customer_unique(tenant: Tenant, email: str | None, phone: str | None, me: str | None = None) -> None:
        for other in live_customers(tenant):
            if other.id != me and ((email and other.email == email) or (phone and other.phone == phone)):
                raise Fail(409, "DUPLICATE_CUSTOMER", "A customer with this email or phone already exists")

    @add(C, ["POST"], "customer:write", status=201)
    def create_customer(request, tenant, user, session, body):
        data = parse(CustomerBody, body)
        if data.groupId:
            tenant.get("Group", tenant.groups, data.groupId)
        check_customer_unique(tenant, data.email, data.phone)
        at = tenant.now()
        customer = Customer(tenant.new_id(), data.name, data.email, data.phone, data.address, data.groupId,
                            None if data.creditLimit is None else money(data.creditLimit), ZERO, 0, at, at)
        tenant.customers[customer.id] = customer
        return tenant.customer_wire(customer)

    @add(f"{C}/{{id}}", ["GET"], "customer:read")
    def get_customer(request, tenant, user, session, body):
        return tenant.customer_wire(tenant.get("Customer", tenant.customers, request.path_params["id"]))

    @add(f"{C}/{{id}}", ["PATCH"], "customer:write")
    def patch_customer(request, tenant, user, session, body):
        customer = tenant.get("Customer", tenant.customers, request.path_params["id"])
        data = parse(CustomerPatch, body)
        given = data.model_fields_set
        if "groupId" in given and data.groupId:
            tenant.get("Group", tenant.groups, data.groupId)
        check_customer_unique(tenant, data.email if "email" in given else None,
                              data.phone if "phone" in given else None, customer.id)
        for name, attr in (("name", "name"), ("email", "email"), ("phone", "phone"), ("address", "address"),
                           ("groupId", "group_id")):
            if name in given and (getattr(data, name) is not None or name != "name"):
                setattr(customer, attr, getattr(data, name))
        if "creditLimit" in given:
            customer.credit_limit = None if data.creditLimit is None else money(data.creditLimit)
        customer.updated_at = tenant.now()
        return tenant.customer_wire(customer)

    @add(f"{C}/{{id}}", ["DELETE"], "customer:write")
    def delete_customer(request, tenant, user, session, body):
        customer = tenant.get("Customer", tenant.customers, request.path_params["id"])
        customer.deleted_at = customer.updated_at = tenant.now()
        return {"id": customer.id, "deletedAt": customer.deleted_at}

    @add(f"{C}/{{id}}/ledger", ["GET"], "customer:read")
    def ledger(request, tenant, user, session, body):
        customer = tenant.get("Customer", tenant.customers, request.path_params["id"])
        entries = []
        for sale in sorted(tenant.sales.values(), key=lambda s: s.created_at):
            if sale.customer_id == customer.id:
                entries.append({"type": "SALE", "saleId": sale.id, "amount": sale.total, "createdAt": sale.created_at})
                entries += [{"type": "PAYMENT", "saleId": sale.id, "amount": -p.amount, "createdAt": p.created_at}
                            for p in sale.payments]
        return {"balance": customer.balance, "entries": entries}

    @add(f"{C}/{{id}}/loyalty", ["GET"], "customer:read")
    def loyalty_history(request, tenant, user, session, body):
        customer = tenant.get("Customer", tenant.customers, request.path_params["id"])
        return {"points": customer.loyalty_points, "history": list(customer.loyalty)}

    @add(f"{C}/{{id}}/loyalty/adjust", ["POST"], "customer:write")
    def loyalty_adjust(request, tenant, user, session, body):
        customer = tenant.get("Customer", tenant.customers, request.path_params["id"])
        data = parse(LoyaltyAdjustBody, body)
        tenant.add_loyalty(customer, data.points, data.reason, tenant.now())
        return tenant.customer_wire(customer)

    # -- stores ----------------------------------------------------------------------------------------------
    @add(f"{V1}/stores", ["GET"], "store:manage")
    def list_stores(request, tenant, user, session, body):
        items = sorted((s for s in tenant.stores.values() if s.deleted_at is None), key=lambda s: s.created_at)
        return _paged(request, items, Store.wire)

    @add(f"{V1}/stores/{{id}}", ["GET"], "store:manage")
    def get_store(request, tenant, user, session, body):
        return tenant.get("Store", tenant.stores, request.path_params["id"]).wire()

    @add(f"{V1}/tenants/me", ["GET"], "tenant:manage")
    def tenant_me(request, tenant, user, session, body):
        return {"id": tenant.id, "slug": tenant.slug, "name": tenant.name, "currency": tenant.currency,
                "timezone": tenant.timezone}

    # -- sandbox admin extras (never faulted, no auth) -------------------------------------------------------
    async def tokens_admin(request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = orjson.loads(await request.body() or b"{}")
            except orjson.JSONDecodeError:
                return JSON({"error": "body must be a JSON object"}, status_code=400)
            if not isinstance(changes, dict) or set(changes) - {"access_ttl", "refresh_ttl", "advertised_ttl",
                                                                 "expire_now"}:
                return JSON({"error": "knobs: access_ttl, refresh_ttl, advertised_ttl, expire_now"}, status_code=422)
            for knob in ("access_ttl", "refresh_ttl", "advertised_ttl"):
                if knob in changes:
                    value = changes[knob]
                    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                        return JSON({"error": f"{knob} must be a positive integer"}, status_code=422)
                    if value is None and knob != "advertised_ttl":
                        return JSON({"error": f"{knob} must be a positive integer"}, status_code=422)
                    setattr(db, knob, value)
            if changes.get("expire_now"):
                db.expire_access_tokens()
        return JSON({"access_ttl": db.access_ttl, "refresh_ttl": db.refresh_ttl, "advertised_ttl": db.advertised_ttl,
                     "logins": db.logins, "refreshes": db.refreshes,
                     "live_sessions": sum(not s.revoked for s in db.sessions.values())})

    routes.append(Route("/_sandbox/tokens", tokens_admin, methods=["GET", "POST"]))

    app = sandbox.build_app(routes)
    app.state.tenantpos = db
    return app

