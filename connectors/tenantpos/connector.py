"""The TenantPOS connector: JWT login with refresh and logout, page/limit reads, variants, the
category tree, per-store stock (delta adjust, absolute set, thresholds, movements), sales
checkout / void / return, customers with groups and loyalty points.

Transport is a :class:`~gateway.sdk.http.VendorClient` whose auth is :class:`TenantPOSAuth` (a
:class:`~gateway.sdk.auth.LoginWithRefresh`: 15-minute access tokens refreshed before expiry and
once on a 401, 7-day refresh tokens, ``POST /auth/logout``); shape is ``mappings/tenantpos/*.yaml``.
The vendor doc (``vendor-docs/tenant-pos-api.txt``) lists endpoints, permissions and status codes
but shows no bodies; ``README.md`` next to this file fixes every shape and choice made where it
is silent, and ``sandbox.py`` behaves the same way.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from gateway import jsonutil
from gateway.errors import (
    Conflict,
    NotFound,
    TillgateError,
    ValidationFailed,
    VendorCredentialsRejected,
    VendorError,
    field_error,
)
from gateway.ids import new_id
from gateway.mapping import MappingContext, MappingError, MappingSpec, dumps_vendor_body, load_connector_mappings
from gateway.mapping.transforms import t_composite_id
from gateway.sdk.auth import LoginWithRefresh
from gateway.sdk.connector import Page, RemoteRecord, load_manifest, page_fingerprint
from gateway.sdk.http import VendorClient, VendorNotFound, VendorRequestRejected
from gateway.sdk.pagination import PageNumberPaginator
from gateway.sdk.remote import RemoteConnector, vendor_time
from gateway.services import adjustments, inventory_links, journal, records
from gateway.services.adjustments import render_adjustment
from gateway.services.locks import LockBusy

log = logging.getLogger(__name__)

VENDOR = "tenantpos"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
#: list endpoint of each entity read page by page (all under ``/v1``)
LIST_PATHS = {"locations": "/v1/stores", "products": "/v1/products", "customers": "/v1/customers",
              "inventory": "/v1/inventory/stock", "orders": "/v1/sales"}
#: entities whose records refer to others, and which (the id maps they resolve against)
REFERENCES = {"products": ("categories",), "inventory": ("products", "locations"),
              "orders": ("customers", "products", "locations")}
#: an incremental inventory read re-reads at most this many changed stock rows one by one;
#: past it, it reads the whole stock list instead (still without sweeping)
MAX_INCREMENTAL_ROWS = 200
#: bumped whenever code (not YAML) changes what a page maps to: part of every page fingerprint
MAPPING_CODE_VERSION = 1
#: vendor field name -> unified field name, for the ``loc`` of a 400's Zod details
VENDOR_FIELDS = {
    "sellingPrice": "price", "costPrice": "cost", "taxRate": "tax_rate", "categoryId": "category_ids",
    "isActive": "active", "trackInventory": "track_inventory", "attributes": "options", "items": "lines",
    "productId": "product_id", "variantId": "variant_id", "unitPrice": "unit_price", "storeId": "location_id",
    "customerId": "customer_id", "creditLimit": "credit_limit", "saleItemId": "line_id",
    "lowStockThreshold": "low_stock_threshold",
}
#: 422 business codes of the vendor -> the gateway's Conflict codes (others: their snake case)
CONFLICT_CODES = {"INSUFFICIENT_STOCK": "insufficient_stock", "CREDIT_LIMIT_EXCEEDED": "credit_limit_exceeded",
                  "SALE_NOT_VOIDABLE": "order_not_voidable", "SALE_NOT_RETURNABLE": "order_not_refundable",
                  "RETURN_EXCEEDS_SALE": "refund_exceeds_order", "DUPLICATE_SKU": "duplicate_sku",
                  "DUPLICATE_CUSTOMER": "duplicate_customer", "PAYMENT_REQUIRED": "payment_required",
                  "OVERPAYMENT": "overpayment", "INSUFFICIENT_POINTS": "insufficient_loyalty_points"}

_MAPPINGS = load_connector_mappings(VENDOR)
_THOUSAND = Decimal(1000)


# -- small helpers -----------------------------------------------------------------------------------




def _iso(moment: datetime) -> str:
    """The ``since`` filter value: ISO 8601 UTC with milliseconds, floored (reads a little more, never less)."""
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _snake(code: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", code.lower()).strip("_") or "conflict"


def _milli(value: Decimal, loc: tuple[str, ...]) -> int:
    """A quantity in thousandths; more than 3 decimals is refused (TenantPOS keeps 3)."""
    scaled = value * _THOUSAND
    if scaled != scaled.to_integral_value():
        raise field_error(loc, "TenantPOS keeps quantities to 3 decimals", "too_precise")
    return int(scaled)


def variant_gid(vendor_variant_id: str) -> str:
    """The gateway id of a vendor variant (``var_`` + a digest of its id: what products.yaml makes)."""
    return t_composite_id({"id": vendor_variant_id}, {"parts": ["id"], "prefix": "var"}, MappingContext(settings={}))


def line_gid(vendor_item_id: str) -> str:
    """The gateway id of a sale item (``line_`` + a digest of its id: what orders.yaml makes)."""
    return t_composite_id({"id": vendor_item_id}, {"parts": ["id"], "prefix": "line"}, MappingContext(settings={}))


def _vendor_error(response: httpx.Response) -> tuple[str | None, list[dict[str, Any]] | None]:
    """``(code, details)`` of an error body ``{"success": false, "error": {"code", "message", "details"}}``."""
    try:
        doc = jsonutil.loads(response.content)
    except jsonutil.MalformedJSON:
        return None, None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return None, None
    code, details = error.get("code"), error.get("details")
    details = [d for d in details if isinstance(d, dict)] if isinstance(details, list) else None
    return (code if isinstance(code, str) else None), details


class VendorPermissionDenied(VendorCredentialsRejected):
    """TenantPOS answered 403: the token is valid but the user's role lacks the permission the
    endpoint needs (doc "HTTP Status Code Reference"); 424, not retryable."""

    code, title = "vendor_permission_denied", "The POS user lacks a permission this operation needs"


class TenantPOSClient(VendorClient):
    """:class:`VendorClient` that keeps TenantPOS's error ``code`` and Zod ``details``.

    The kit keeps only the status and message; this adds ``vendor_code`` and ``vendor_details``
    to the error's ``extra`` (also shown in the problem document), and turns a 403 into
    :class:`VendorPermissionDenied`.
    """

    def classify(self, outcome: httpx.Response | BaseException) -> VendorError | None:
        """The kit's classification plus ``vendor_code``/``vendor_details`` from an error body."""
        error = super().classify(outcome)
        if error is None or not isinstance(outcome, httpx.Response) or "vendor_code" in error.extra:
            return error
        code, details = _vendor_error(outcome)
        if outcome.status_code == 403:
            error = VendorPermissionDenied(
                f"{self.vendor} refused {outcome.request.method} {outcome.request.url.path}: the POS user's role "
                "lacks the permission", vendor=self.vendor, vendor_status=403)
        error.extra["vendor_code"] = code
        if details is not None:
            error.extra["vendor_details"] = details
        return error


class TenantPOSAuth(LoginWithRefresh):
    """TenantPOS sessions (doc "Authentication Endpoints", "Connection Details").

    ``POST {base}/auth/login`` with ``{"email", "password", "tenantSlug"}`` answers
    ``{"success": true, "data": {"accessToken", "refreshToken", "expiresIn": 900, ...}}``;
    ``POST {base}/auth/refresh`` with ``{"refreshToken"}`` answers a new pair (the refresh token
    rotates); ``POST {base}/auth/logout`` (with the bearer) and ``{"refreshToken"}`` revokes it.
    Access tokens live 15 minutes (900 s, the ``default_ttl`` when the answer has no
    ``expiresIn``); they are renewed ``skew`` seconds before expiry and once on a 401 (the kit's
    life cycle); a refused refresh token (7 days) means a new login.

    Args:
        base_url: the API root (``https://api.yourdomain.com/api``); auth paths hang off it.
        email, password, tenant: the POS user's credentials and tenant slug (never logged).
    """

    def __init__(self, base_url: str, email: str, password: str, tenant: str, **kwargs: Any) -> None:
        kwargs.setdefault("default_ttl", 900.0)
        super().__init__(**kwargs)
        self.base_url = base_url.rstrip("/")
        self._email, self._password, self._tenant = email, password, tenant

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Request:
        return httpx.Request("POST", f"{self.base_url}{path}", content=dumps_vendor_body(body), headers=JSON_HEADERS)

    def login_request(self, request: httpx.Request) -> httpx.Request:
        """``POST /auth/login`` with the credentials."""
        return self._post("/auth/login", {"email": self._email, "password": self._password, "tenantSlug": self._tenant})

    def refresh_request(self, request: httpx.Request, refresh_token: str) -> httpx.Request:
        """``POST /auth/refresh`` with the refresh token."""
        return self._post("/auth/refresh", {"refreshToken": refresh_token})

    def logout_request(self, base_url: httpx.URL, refresh_token: str | None) -> httpx.Request | None:
        """``POST /auth/logout`` revoking the session's refresh token."""
        return self._post("/auth/logout", {"refreshToken": refresh_token} if refresh_token else {})

    def secrets(self) -> tuple[str, ...]:
        """The tokens held and the password (for redaction of vendor messages)."""
        return (*super().secrets(), self._password)


#: One session per connection and credentials in this process: connector instances are made per
#: request, and each must not log in again (the vendor keeps every session for 7 days).
_SESSIONS: dict[tuple[str, str, int], TenantPOSAuth] = {}


class TenantPOSConnector(RemoteConnector):
    """TenantPOS (``vendor-docs/tenant-pos-api.txt``; shapes fixed by ``README.md``).

    Reads: page/limit lists of stores, products (with variants), customers, stock rows and
    sales; the category tree; inventory incrementally from the stock movement history. Writes:
    products (create, update with variants, delete), customers (create, update), sales
    (checkout, void, return), stock deltas (``POST /inventory/stock/adjust``, pushed by a worker,
    applied once) and absolute counts (``POST /inventory/stock/set``, compare-and-set), plus
    low-stock thresholds, barcode lookup, loyalty adjustments and due collection as methods.

    Class attributes tests override: ``client_overrides`` (the kit's), ``auth_clock`` (seconds
    since the epoch for token expiry), ``auth_skew`` (seconds before expiry a token is renewed).
    """

    manifest: ClassVar[dict[str, Any]] = load_manifest("connectors.tenantpos")
    mappings: ClassVar[dict[str, MappingSpec]] = _MAPPINGS
    vendor_title: ClassVar[str] = "TenantPOS"
    vendor_id: ClassVar[str] = VENDOR
    client_class: ClassVar[type[VendorClient]] = TenantPOSClient
    auth_clock: ClassVar[Callable[[], float]] = staticmethod(time.time)
    auth_skew: ClassVar[float] = 30.0

    # -- transport ---------------------------------------------------------------------------------
    def auth(self) -> TenantPOSAuth:
        """The connection's :class:`TenantPOSAuth`, shared by every instance on this connection
        (and these credentials) in the process, so a session outlives one request."""
        creds = self.context.credentials or {}
        email, password, tenant = (str(creds.get(k) or "") for k in ("email", "password", "tenant"))
        digest = hashlib.sha256("\0".join((email, password, tenant, str(self.settings["base_url"]))).encode()).hexdigest()
        key = (str(self.context.id), digest, id(type(self).auth_clock))
        found = _SESSIONS.get(key)
        if found is None:
            found = TenantPOSAuth(str(self.settings["base_url"]), email, password, tenant, skew=self.auth_skew,
                                  clock=type(self).auth_clock)
            _SESSIONS[key] = found
        return found

    @property
    def currency(self) -> str:
        """The connection's ISO 4217 currency (TenantPOS sends bare decimal strings in the major unit)."""
        return str(self.settings.get("currency") or "USD").upper()

    async def _json(self, client: VendorClient, method: str, path: str, body: Any = None, *,
                    params: dict[str, Any] | None = None, fields: dict[str, str] | None = None,
                    loc: tuple[str, ...] = ()) -> Any:
        """One call; the ``data`` of the success envelope. Vendor 4xx answers become the gateway's
        own errors (:meth:`_translate`); ``fields`` renames vendor fields in a 400's ``loc`` and
        ``loc`` goes in front of them (``("variants", "1")`` for one variant's own call)."""
        kwargs: dict[str, Any] = {"params": params} if params else {}
        if body is not None:
            kwargs.update(content=dumps_vendor_body(body), headers=JSON_HEADERS)
        try:
            doc = await client.json(method, path, **kwargs)
        except VendorRequestRejected as exc:
            raise self._translate(exc, fields, loc) from exc
        if not isinstance(doc, dict) or doc.get("success") is not True or "data" not in doc:
            raise VendorError(f"TenantPOS answered {method} {path} without a success envelope", vendor=VENDOR,
                              code="vendor_invalid_response")
        return doc["data"]

    @staticmethod
    def _translate(exc: VendorRequestRejected, fields: dict[str, str] | None = None,
                   loc: tuple[str, ...] = ()) -> TillgateError:
        """The doc's status table in the gateway's terms: 400 (a Zod failure: ``error.details``)
        → :class:`ValidationFailed` with one field error per detail; 409 → :class:`Conflict`
        (``duplicate_sku`` for ``DUPLICATE_SKU``); 422 → :class:`Conflict` with the business code
        (``insufficient_stock``, ``credit_limit_exceeded``, ...); any other 4xx stays
        ``vendor_request_rejected`` (502)."""
        status = exc.extra.get("vendor_status")
        code = exc.extra.get("vendor_code") or ""
        names = {**VENDOR_FIELDS, **(fields or {})}
        if status == 400:
            errors = []
            for detail in exc.extra.get("vendor_details") or []:
                path = [str(names.get(p, p)) if isinstance(p, str) else str(p) for p in detail.get("path") or []]
                errors.append({"loc": ["body", *loc, *path], "msg": str(detail.get("message") or "invalid"),
                               "type": f"vendor_{detail.get('code') or 'invalid'}"})
            if not errors:
                errors = [{"loc": ["body"], "msg": exc.detail, "type": "vendor_invalid"}]
            return ValidationFailed(f"TenantPOS refused the request: {exc.detail}", errors=errors,
                                    vendor=VENDOR, vendor_status=400, vendor_code=code or None)
        if status in (409, 422):
            return Conflict(f"TenantPOS refused the request: {exc.detail}",
                            code=CONFLICT_CODES.get(code, _snake(code) if code else "conflict"),
                            vendor=VENDOR, vendor_status=status, vendor_code=code or None)
        return exc

    # -- life cycle --------------------------------------------------------------------------------
    async def check(self) -> None:
        """Log in and ``GET /auth/me``: bad credentials raise ``VendorCredentialsRejected`` (424).

        Raises:
            ValidationFailed: ``currency_mismatch`` when the tenant keeps another currency than
                the ``currency`` setting (every amount would be labelled wrong).
            VendorError: the vendor failed.
        """
        async with self._session() as client:
            me = await self._json(client, "GET", "/auth/me")
        theirs = me.get("currency") if isinstance(me, dict) else None
        if isinstance(theirs, str) and theirs.upper() != self.currency:
            raise field_error(("settings", "currency"), f"the TenantPOS tenant keeps {theirs.upper()}, not {self.currency}",
                           "currency_mismatch", code="currency_mismatch")

    async def health(self) -> dict[str, Any]:
        """``GET /auth/me`` (TenantPOS documents no health endpoint): ``{"status", "latency_ms",
        "tenant"}``, or ``error``/``detail`` when the vendor could not be asked. Never raises."""
        started = time.perf_counter()
        try:
            async with self._session() as client:
                me = await self._json(client, "GET", "/auth/me")
        except VendorError as exc:
            return {"status": "unhealthy", "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    "error": exc.code, "detail": exc.detail}
        return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                "tenant": me.get("tenantSlug") if isinstance(me, dict) else None}

    async def logout(self, *, everywhere: bool = False) -> None:
        """Revoke the session: ``POST /auth/logout`` (its refresh token), or ``/auth/logout-all``
        with ``everywhere`` (every session of the POS user). The next call logs in again.

        Raises:
            VendorError: the vendor failed (the local tokens are forgotten anyway).
        """
        auth = self.auth()
        try:
            if auth.has_token:
                async with self._session() as client:
                    if everywhere:
                        await self._json(client, "POST", "/auth/logout-all", {})
                    else:
                        body = {"refreshToken": auth._refresh} if auth._refresh else {}
                        await self._json(client, "POST", "/auth/logout", body)
        finally:
            auth.forget()

    # -- mapping -----------------------------------------------------------------------------------
    def _record(self, entity: str, raw: dict[str, Any], ctx: MappingContext) -> RemoteRecord:
        """Map one vendor object; ``remote_updated_at``/``created_at`` are its ``updatedAt``/``createdAt``.

        Raises:
            MappingError: the object does not fit the entity's mapping.
        """
        remote_id, body = _MAPPINGS[entity].read(raw, ctx)
        if entity == "inventory":
            available = body["on_hand"] - self.safety_stock
            body["available"] = available if available > 0 else Decimal(0)
        return RemoteRecord(remote_id=remote_id, body=body, raw=raw, remote_updated_at=vendor_time(raw.get("updatedAt")),
                            created_at=vendor_time(raw.get("createdAt")))

    async def _maps_for(self, entity: str, raw: dict[str, Any]) -> dict[str, dict[str, str]]:
        """The id maps one vendor record resolves against (only its own references)."""
        maps: dict[str, dict[str, str]] = {}
        if entity == "products":
            maps["categories"] = await self._id_map("categories", [raw.get("categoryId")])
        elif entity == "categories":
            maps["categories"] = await self._id_map("categories", [raw.get("parentId")])
        elif entity == "inventory":
            maps["products"] = await self._id_map("products", [raw.get("productId")])
            maps["locations"] = await self._id_map("locations", [raw.get("storeId")])
        elif entity == "orders":
            items = raw.get("items") if isinstance(raw.get("items"), list) else []
            maps["products"] = await self._id_map("products", [i.get("productId") for i in items if isinstance(i, dict)])
            maps["customers"] = await self._id_map("customers", [raw.get("customerId")])
            maps["locations"] = await self._id_map("locations", [raw.get("storeId")])
        return maps

    # -- reads -------------------------------------------------------------------------------------
    def _pager(self) -> PageNumberPaginator:
        return PageNumberPaginator(page_size=self.page_size, records_path="data", total_path="meta.total",
                                   page_path="meta.page", page_size_path="meta.limit")

    async def fetch(self, entity: str, *, since: datetime | None = None,
                    checkpoint: dict[str, Any] | None = None) -> AsyncIterator[Page]:
        """Read ``entity`` page by page (``?page=&limit=``, ``meta.total``).

        ``categories``: the tree, one page per depth (roots first, so parents are cached before
        their children resolve to them). ``inventory`` with ``since``: the stock rows the
        movement history (``GET /inventory/movements?since=``) shows changed, re-read one by one
        (a full list read past :data:`MAX_INCREMENTAL_ROWS`). Everything else: full scans.

        Raises:
            OperationNotSupported: an entity TenantPOS does not have.
            VendorError: the vendor failed (``PaginationLoop`` for a list that does not advance).
            MappingError: a record does not fit its mapping (when the page's records are read).
        """
        if entity != "categories" and entity not in LIST_PATHS:
            raise self._unsupported(f"reading {entity} from the vendor")
        async with self._session() as client:
            if entity == "categories":
                async for page in self._fetch_categories(client):
                    yield page
                return
            maps = {ref: await self._id_map(ref) for ref in REFERENCES.get(entity, ())}
            if entity == "inventory" and since is not None and checkpoint is None:
                rows = await self._changed_rows(client, since)
                if rows is not None:
                    ctx = self._ctx(maps)
                    yield Page(load=lambda: self._load("inventory", rows, ctx), checkpoint=None)
                    return
            async for page in self._paged(client, entity, maps, checkpoint):
                yield page

    async def _paged(self, client: VendorClient, entity: str, maps: dict[str, dict[str, str]],
                     checkpoint: dict[str, Any] | None) -> AsyncIterator[Page]:
        """Pages of one list endpoint, mapped lazily, each fingerprinted by its response bytes,
        the mapping file, the settings and the reference ``maps``."""
        ctx = self._ctx(maps)
        base = self.fingerprint_base(entity, _MAPPINGS[entity].digest, MAPPING_CODE_VERSION, maps)
        async for page in self._pager().pages(client, LIST_PATHS[entity], start=checkpoint):
            yield Page(load=lambda page=page: self._load(entity, page.records, ctx), checkpoint=page.next_position,
                       fingerprint=page_fingerprint(base, page.digest))

    def _load(self, entity: str, raws: list[Any], ctx: MappingContext) -> list[RemoteRecord]:
        if entity != "inventory":
            return [self._record(entity, raw, ctx) for raw in raws]
        out = []
        for raw in raws:
            try:
                out.append(self._record("inventory", raw, ctx))
            except MappingError as exc:  # a product or store not (yet) cached: the next sync has it
                log.info("tenantpos %s: skipping stock row %s (%s)", self.context.id,
                         raw.get("id") if isinstance(raw, dict) else raw, exc)
        return out

    async def _fetch_categories(self, client: VendorClient) -> AsyncIterator[Page]:
        tree = await self._json(client, "GET", "/v1/products/categories")
        if not isinstance(tree, list):
            raise VendorError("TenantPOS categories are not a list", vendor=VENDOR, code="vendor_invalid_response")
        level = [node for node in tree if isinstance(node, dict)]
        seen: set[str] = set()
        while level:
            maps = {"categories": await self._id_map("categories", [n.get("parentId") for n in level])}
            ctx = self._ctx(maps)
            nodes = [{k: v for k, v in n.items() if k != "children"} for n in level if n.get("id") not in seen]
            seen.update(str(n.get("id")) for n in nodes)
            yield Page([self._record("categories", n, ctx) for n in nodes], None)
            level = [child for n in level for child in (n.get("children") or []) if isinstance(child, dict)]

    async def _changed_rows(self, client: VendorClient, since: datetime) -> list[dict[str, Any]] | None:
        """The stock rows moved since ``since`` (movement history), read again; ``None`` when more
        than :data:`MAX_INCREMENTAL_ROWS` moved (the caller reads the whole list)."""
        keys: dict[tuple[str, str, str], None] = {}
        pager = self._pager()
        async for page in pager.pages(client, "/v1/inventory/movements", params={"since": _iso(since)}):
            for move in page.records:
                if isinstance(move, dict):
                    keys.setdefault((str(move.get("storeId")), str(move.get("productId")), str(move.get("variantId") or "")))
            if len(keys) > MAX_INCREMENTAL_ROWS:
                return None
        rows = []
        for store, product, variant in keys:
            row = await self._stock_row(client, store, product, variant or None, missing_ok=True)
            if row is not None:
                rows.append(row)
        return rows

    async def _stock_row(self, client: VendorClient, store: str, product: str, variant: str | None, *,
                         missing_ok: bool = False) -> dict[str, Any] | None:
        """``GET /inventory/stock?storeId=&productId=&variantId=``: the one stock row, or ``None``
        (``missing_ok``) when the product is gone.

        Raises:
            VendorError: ``vendor_not_found`` (502) for a row that should exist, or the vendor failed.
        """
        params = {"storeId": store, "productId": product, "variantId": variant or "", "limit": 1}
        try:
            data = await self._json(client, "GET", "/v1/inventory/stock", params=params)
        except VendorNotFound:
            data = []
        row = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else None
        if row is None and not missing_ok:
            raise VendorNotFound(f"TenantPOS has no stock row for product {product} at store {store}",
                                 vendor=VENDOR, vendor_status=404)
        return row

    # -- write helpers -----------------------------------------------------------------------------

    def _check_currency(self, currency: str | None) -> None:
        if currency and currency.upper() != self.currency:
            raise field_error(("body", "currency"), f"this TenantPOS tenant works in {self.currency}", "unsupported_by_vendor")

    def _check_catalog(self, body: Any) -> None:
        """Refuse what TenantPOS cannot hold and would change the product's meaning."""
        if body.category_ids and len(body.category_ids) > 1:
            raise field_error(("body", "category_ids"), "a TenantPOS product has one category", "unsupported_by_vendor")
        taxes = body.taxes or []
        if len(taxes) > 1 or any(tax.compound for tax in taxes):
            raise field_error(("body", "taxes"), "TenantPOS products carry one simple tax rate", "unsupported_by_vendor")
        if getattr(body, "tax_inclusive", None):
            raise field_error(("body", "tax_inclusive"), "TenantPOS adds tax on top of the price", "unsupported_by_vendor")
        if getattr(body, "translations", None):
            raise field_error(("body", "translations"), "TenantPOS keeps no translations", "unsupported_by_vendor")

    # -- catalog -----------------------------------------------------------------------------------
    async def create_product(self, body: Any) -> dict[str, Any]:
        """``POST /v1/products`` with its variants inline; the product answered is cached.

        Raises:
            ValidationFailed: what TenantPOS cannot hold (several categories or taxes, translations,
                tax-inclusive prices, another currency, more than 2 decimals), or its 400 with the
                Zod details as field errors.
            Conflict: ``duplicate_sku`` (the vendor's 409).
        """
        self._check_catalog(body)
        self._check_currency(body.currency)
        data = body.model_dump()
        if not data.get("variants"):
            data["variants"] = None
        remote = {"categories": await self._remote_map("categories", data.get("category_ids") or [])}
        vendor_body = self._write_body("products", data, remote)
        async with self._session() as client:
            raw = await self._json(client, "POST", "/v1/products", vendor_body)
            product = await self._cache("products", raw)
            if body.low_stock_threshold is not None:
                await self._thresholds_for_new(client, raw, Decimal(body.low_stock_threshold))
        return product

    async def _thresholds_for_new(self, client: VendorClient, raw: dict[str, Any], threshold: Decimal) -> None:
        """Give a new product's stock rows the ``low_stock_threshold`` it was created with, in
        every store (``PATCH /inventory/stock/:storeId/:productId/threshold``)."""
        stores = await self._id_map("locations")
        keys = [v.get("id") for v in raw.get("variants") or []] or [None]
        for store in sorted(stores):
            for variant in keys:
                await self._json(client, "PATCH", f"/v1/inventory/stock/{store}/{raw['id']}/threshold",
                                 {"lowStockThreshold": threshold, "variantId": variant})

    async def update_product(self, product_id: str, body: Any) -> dict[str, Any]:
        """``PATCH /v1/products/:id`` with the fields given; ``variants`` (when given) replaces the
        list: variants matched by ``id`` (their gateway id) or SKU are patched, new ones added
        (``POST /:id/variants``), missing ones soft-deleted (``DELETE /:id/variants/:variantId``).
        Then ``GET /v1/products/:id`` is cached.

        Raises:
            NotFound: no live product ``product_id``. ValidationFailed, Conflict: as :meth:`create_product`.
        """
        current = await self._live("products", product_id)
        if current is None:
            raise NotFound(f"no product {product_id!r} on this connection")
        self._check_catalog(body)
        data = body.model_dump(exclude_unset=True)
        variants = data.pop("variants", None)
        remote = {"categories": await self._remote_map("categories", data.get("category_ids") or [])}
        vendor_body = self._write_body("products", data, remote) if data else {}
        if "category_ids" in data and not data["category_ids"]:
            vendor_body["categoryId"] = None
        path = f"/v1/products/{current['remote_id']}"
        async with self._session() as client:
            if vendor_body:
                await self._json(client, "PATCH", path, vendor_body)
            if variants is not None:
                await self._replace_variants(client, current, variants)
            raw = await self._json(client, "GET", path)
        return await self._cache("products", raw)

    async def _replace_variants(self, client: VendorClient, current: dict[str, Any], wanted: list[dict[str, Any]]) -> None:
        path = f"/v1/products/{current['remote_id']}/variants"
        existing = {v["id"]: v for v in current.get("variants") or []}
        by_sku = {v.get("sku"): v for v in existing.values() if v.get("sku")}
        kept: set[str] = set()
        for n, variant in enumerate(wanted):
            match = existing.get(variant.get("id") or "") or by_sku.get(variant.get("sku"))
            mapped = self._write_body("products", {"variants": [variant]}, {})["variants"][0]
            if match is None:
                await self._json(client, "POST", path, mapped, loc=("variants", str(n)))
            else:
                kept.add(match["id"])
                await self._json(client, "PATCH", f"{path}/{match['remote_id']}", mapped, loc=("variants", str(n)))
        for gid, variant in existing.items():
            if gid not in kept:
                await self._json(client, "DELETE", f"{path}/{variant['remote_id']}")

    async def delete_product(self, product_id: str) -> dict[str, Any]:
        """``DELETE /v1/products/:id`` (TenantPOS soft-deletes); the cached product is marked
        deleted (``product.deleted``). A product TenantPOS no longer has is deleted here too.

        Raises:
            NotFound: no live product ``product_id``.
        """
        current = await self._live("products", product_id)
        if current is None:
            raise NotFound(f"no product {product_id!r} on this connection")
        async with self._session() as client:
            try:
                await self._json(client, "DELETE", f"/v1/products/{current['remote_id']}")
            except VendorNotFound:
                log.info("tenantpos %s: product %s was already gone at the POS", self.context.id, current["remote_id"])
        async with self.db.transaction(self.context.tenant_id) as uow:
            gone = await records.soft_delete(uow, connection_id=self.context.id, entity="products", record_id=product_id)
        return gone or current

    async def lookup_barcode(self, barcode: str) -> dict[str, Any]:
        """``GET /v1/products/lookup/barcode/:barcode`` (a product's or a variant's barcode): the
        product is cached and returned as ``{"product": <Product>, "variant": <Variant> | None}``.

        Raises:
            NotFound: TenantPOS knows no product with this barcode.
        """
        async with self._session() as client:
            try:
                raw = await self._json(client, "GET", f"/v1/products/lookup/barcode/{quote(barcode, safe='')}")
            except VendorNotFound as exc:
                raise NotFound(f"no product with barcode {barcode!r} at TenantPOS") from exc
        matched = raw.pop("matchedVariantId", None) if isinstance(raw, dict) else None
        product = await self._cache("products", raw)
        variant = next((v for v in product["variants"] if matched and v["remote_id"] == matched), None)
        return {"product": product, "variant": variant}

    # -- customers ---------------------------------------------------------------------------------
    @staticmethod
    def _address_line(address: Any) -> str | None:
        if not address:
            return None
        parts = [address.get(k) for k in ("line1", "line2", "city", "region", "postal_code", "country")]
        return ", ".join(p for p in parts if p) or None

    async def create_customer(self, body: Any) -> dict[str, Any]:
        """``POST /v1/customers`` (name, email, phone, one-line address, credit limit); cached.

        Raises:
            ValidationFailed: another currency, or the vendor's 400. Conflict: ``duplicate_customer``.
        """
        self._check_currency(body.currency)
        data = body.model_dump()
        data["_address_line"] = self._address_line(data.get("address"))
        vendor_body = self._write_body("customers", data, {})
        async with self._session() as client:
            raw = await self._json(client, "POST", "/v1/customers", vendor_body)
        return await self._cache("customers", raw)

    async def update_customer(self, customer_id: str, body: Any) -> dict[str, Any]:
        """``PATCH /v1/customers/:id`` with the fields given; the customer answered is cached.

        Raises:
            NotFound: no live customer. ValidationFailed, Conflict: as :meth:`create_customer`.
        """
        current = await self._live("customers", customer_id)
        if current is None:
            raise NotFound(f"no customer {customer_id!r} on this connection")
        data = body.model_dump(exclude_unset=True)
        if "address" in data:
            data["_address_line"] = self._address_line(data.get("address"))
        vendor_body = self._write_body("customers", data, {})
        if "address" in data and data["_address_line"] is None:
            vendor_body["address"] = None
        async with self._session() as client:
            path = f"/v1/customers/{current['remote_id']}"
            raw = await self._json(client, "PATCH", path, vendor_body) if vendor_body else \
                await self._json(client, "GET", path)
        return await self._cache("customers", raw)

    async def customer_groups(self) -> list[dict[str, Any]]:
        """``GET /v1/customers/groups``: ``[{"remote_id", "name", "discount_percent" (Decimal, percent)}]``."""
        async with self._session() as client:
            groups = await self._json(client, "GET", "/v1/customers/groups")
        return [{"remote_id": str(g["id"]), "name": g.get("name"), "discount_percent": Decimal(str(g.get("discountPercent") or 0))}
                for g in groups or [] if isinstance(g, dict) and g.get("id")]

    async def adjust_loyalty(self, customer_id: str, points: int, reason: str) -> dict[str, Any]:
        """``POST /v1/customers/:id/loyalty/adjust`` (whole points, + or -); the customer is cached.

        Raises:
            NotFound: no live customer. Conflict: ``insufficient_loyalty_points``.
        """
        current = await self._live("customers", customer_id)
        if current is None:
            raise NotFound(f"no customer {customer_id!r} on this connection")
        async with self._session() as client:
            raw = await self._json(client, "POST", f"/v1/customers/{current['remote_id']}/loyalty/adjust",
                                   {"points": int(points), "reason": reason})
        return await self._cache("customers", raw)

    # -- sales -------------------------------------------------------------------------------------
    async def _location(self, location_id: str | None) -> dict[str, Any]:
        if location_id:
            location = await self._live("locations", location_id)
            if location is None:
                raise field_error(("body", "location_id"), "no such location on this connection", "unknown_location")
            return location
        stores = await self._id_map("locations")
        if len(stores) != 1:
            raise field_error(("body", "location_id"), "this TenantPOS tenant has several stores: name one", "missing")
        location = await self._live("locations", next(iter(stores.values())))
        if location is None:
            raise field_error(("body", "location_id"), "the connection's store is deleted", "unknown_location")
        return location

    async def _line_product(self, line: Any, loc: tuple[str, ...]) -> tuple[dict[str, Any], str | None]:
        """The cached product of an order line or adjustment and the vendor id of its variant.

        A product with variants needs one (``variant_id``, or a variant's SKU); one without has none.
        """
        product = await self._live("products", line.product_id) if line.product_id else None
        variant = None
        if product is None and line.sku and not line.product_id:
            async with self.db.read() as conn:
                product = await records.find_product_by_sku(conn, connection_id=self.context.id, sku=line.sku)
                if product is None:
                    product, variant = await records.find_variant_by_sku(conn, connection_id=self.context.id, sku=line.sku)
        if product is None:
            raise field_error((*loc, "product_id"), "no such product on this connection", "unknown_product")
        variants = product.get("variants") or []
        if line.variant_id:
            variant = next((v for v in variants if v["id"] == line.variant_id), None)
            if variant is None:
                raise field_error((*loc, "variant_id"), "not a variant of this product", "unknown_variant")
        if variants and variant is None:
            raise field_error((*loc, "variant_id"), "this product has variants: name one", "variant_required")
        return product, (variant["remote_id"] if variant else None)

    async def create_order(self, body: Any) -> dict[str, Any]:
        """``POST /v1/sales/checkout`` (doc "Sales": process checkout); the sale answered is cached
        (``order.created``) and the sold rows' stock read again.

        Lines by ``product_id`` (+ ``variant_id``) or SKU (a product's or a variant's); quantities
        up to 3 decimals; ``unit_price`` omitted → TenantPOS's catalog price; ``discount`` money
        off the line. Payments are sent as tenders (cash above the total gives change; less than
        the total leaves an amount due, which needs a customer). ``number`` goes as the sale's
        note (TenantPOS numbers invoices itself).

        Raises:
            ValidationFailed: unknown product/variant/customer/location, ``placed_at``, another
                currency, a ``upi`` tender (TenantPOS has no such method), the vendor's 400.
            Conflict: ``insufficient_stock``, ``credit_limit_exceeded``, ``payment_required`` (422s).
        """
        if body.placed_at is not None:
            raise field_error(("body", "placed_at"), "TenantPOS dates a sale when it is made", "unsupported_by_vendor")
        self._check_currency(body.currency)
        location = await self._location(body.location_id)
        data = body.model_dump()
        for n, line in enumerate(body.lines):
            product, variant = await self._line_product(line, ("body", "lines", str(n)))
            data["lines"][n]["product_id"] = product["id"]
            data["lines"][n]["variant_remote_id"] = variant
        for n, payment in enumerate(body.payments):
            if payment.method == "upi":
                raise field_error(("body", "payments", str(n), "method"), "TenantPOS has no UPI tender", "unsupported_by_vendor")
        if body.customer_id and await self._live("customers", body.customer_id) is None:
            raise field_error(("body", "customer_id"), "no such customer on this connection", "unknown_customer")
        data["store_remote_id"] = location["remote_id"]
        remote = {"products": await self._remote_map("products", [line["product_id"] for line in data["lines"]]),
                  "customers": await self._remote_map("customers", [body.customer_id])}
        vendor_body = self._write_body("orders", data, remote)
        async with self._session() as client:
            raw = await self._json(client, "POST", "/v1/sales/checkout", vendor_body)
            order = await self._cache("orders", raw)
            await self._refresh_stock(client, raw)
        return order

    async def _refresh_stock(self, client: VendorClient, sale: dict[str, Any]) -> None:
        """Read and cache the stock rows a sale, void or return moved (best effort: the next poll
        brings them otherwise)."""
        seen = set()
        for item in sale.get("items") or []:
            key = (sale.get("storeId"), item.get("productId"), item.get("variantId"))
            if key in seen or not all(key[:2]):
                continue
            seen.add(key)
            try:
                row = await self._stock_row(client, str(key[0]), str(key[1]), key[2], missing_ok=True)
                if row is not None:
                    await self._cache("inventory", row)
            except VendorError as exc:
                log.info("tenantpos %s: could not re-read stock %s (%s)", self.context.id, key, exc.code)

    async def _sale(self, order_id: str) -> dict[str, Any]:
        order = await self._live("orders", order_id)
        if order is None:
            raise NotFound(f"no order {order_id!r} on this connection")
        return order

    async def void_order(self, order_id: str, body: Any = None) -> dict[str, Any]:
        """``POST /v1/sales/:id/void`` (``{"reason"}``): TenantPOS restocks the items; the sale is
        cached (``order.voided``) and the stock read again.

        Raises:
            NotFound: no such order. Conflict: ``order_not_voidable`` (voided or returned already).
        """
        order = await self._sale(order_id)
        reason = getattr(body, "reason", None) if body is not None else None
        async with self._session() as client:
            raw = await self._json(client, "POST", f"/v1/sales/{order['remote_id']}/void",
                                   {"reason": reason} if reason else {})
            voided = await self._cache("orders", raw, event_type="order.voided")
            await self._refresh_stock(client, raw)
        return voided

    async def refund_order(self, order_id: str, body: Any = None) -> dict[str, Any]:
        """``POST /v1/sales/:id/return`` with ``{"items": [{"saleItemId", "quantity"}] | omitted
        for everything left, "reason", "restock"}``; the sale is cached (``order.refunded``) and
        the stock read again. Partial returns are supported (status ``partially_refunded``).

        Raises:
            NotFound: no such order. ValidationFailed: an unknown line, ``refunded_at``.
            Conflict: ``order_not_refundable`` (voided or fully returned), ``refund_exceeds_order``.
        """
        order = await self._sale(order_id)
        payload: dict[str, Any] = {"restock": True}
        if body is not None:
            if body.refunded_at is not None:
                raise field_error(("body", "refunded_at"), "TenantPOS dates a return when it is made", "unsupported_by_vendor")
            payload["restock"] = body.restock
            if body.reason:
                payload["reason"] = body.reason
        async with self._session() as client:
            if body is not None and body.lines:
                sale = await self._json(client, "GET", f"/v1/sales/{order['remote_id']}")
                by_gid = {line_gid(str(item["id"])): str(item["id"]) for item in sale.get("items") or []}
                items = []
                for n, line in enumerate(body.lines):
                    if line.line_id not in by_gid:
                        raise field_error(("body", "lines", str(n), "line_id"), "not a line of this order", "unknown_line")
                    _milli(line.quantity, ("body", "lines", str(n), "quantity"))
                    items.append({"saleItemId": by_gid[line.line_id], "quantity": line.quantity})
                payload["items"] = items
            raw = await self._json(client, "POST", f"/v1/sales/{order['remote_id']}/return", payload,
                                   fields={"items": "lines"})
            refunded = await self._cache("orders", raw, event_type="order.refunded")
            await self._refresh_stock(client, raw)
        return refunded

    async def collect_due(self, order_id: str, method: str, amount: Decimal, reference: str | None = None) -> dict[str, Any]:
        """``POST /v1/payments/collect-due`` (``amount`` in the major unit, 2 decimals) towards a
        sale with an amount due; the sale is read again and cached (``order.updated``).

        Raises:
            NotFound: no such order. ValidationFailed: a method TenantPOS lacks. Conflict: ``overpayment``.
        """
        order = await self._sale(order_id)
        methods = {"cash": "CASH", "card": "CARD", "wallet": "MOBILE", "bank": "BANK_TRANSFER", "credit": "CREDIT",
                   "other": "OTHER"}
        if method not in methods:
            raise field_error(("body", "method"), f"TenantPOS has no {method} tender", "unsupported_by_vendor")
        body: dict[str, Any] = {"saleId": order["remote_id"], "method": methods[method], "amount": Decimal(amount)}
        if reference:
            body["reference"] = reference
        async with self._session() as client:
            await self._json(client, "POST", "/v1/payments/collect-due", body)
            raw = await self._json(client, "GET", f"/v1/sales/{order['remote_id']}")
        return await self._cache("orders", raw)

    # -- inventory ---------------------------------------------------------------------------------
    async def create_adjustment(self, body: Any) -> dict[str, Any]:
        """Accept a stock delta (units of the product, up to 3 decimals) for
        ``POST /v1/inventory/stock/adjust``; the worker pushes it (:meth:`push_adjustment`).

        Validated first (nothing stored for a bad request), then stored ``pending`` with its push
        job in one transaction (:func:`gateway.services.adjustments.store_pending`).

        Raises:
            ValidationFailed: unknown product, variant or location; a variant missing for a
                product with variants; a zero delta or one with more than 3 decimals.
        """
        product, _variant = await self._line_product(body, ("body",))
        location = await self._live("locations", body.location_id)
        if location is None:
            raise field_error(("body", "location_id"), "no such location on this connection", "unknown_location")
        delta = _milli(body.delta, ("body", "delta"))
        if delta == 0:
            raise field_error(("body", "delta"), "a delta of zero changes nothing", "zero_delta")
        variant_id = body.variant_id
        if variant_id is None and _variant is not None:  # named by a variant's SKU
            variant_id = variant_gid(_variant)
        now = jsonutil.utcnow()
        values = {"id": new_id("adjustment"), "tenant_id": self.context.tenant_id, "connection_id": self.context.id,
                  "product_id": product["id"], "variant_id": variant_id, "location_id": location["id"],
                  "delta_milli": delta, "reason": body.reason, "reference": body.reference, "created_at": now,
                  "updated_at": now}
        async with self.db.transaction(self.context.tenant_id) as uow:
            return await adjustments.store_pending(uow, values)

    def _variant_remote(self, product: dict[str, Any], variant_id: str | None) -> str | None:
        if not variant_id:
            return None
        found = next((v for v in product.get("variants") or [] if v["id"] == variant_id), None)
        if found is None:
            raise LookupError(f"variant {variant_id} is no longer on product {product['id']}")
        return str(found["remote_id"])

    async def push_adjustment(self, adjustment_id: str, *, final: bool = False) -> dict[str, Any]:
        """One push of a ``pending`` adjustment: ``POST /v1/inventory/stock/adjust`` with the
        delta and ``reference: tillgate-<adjustment id>`` (README "Inventory writes").

        Applied once: TenantPOS has no idempotency key, so the intent is checked on retry. Every
        attempt after the first asks the movement history for a movement with that reference
        (``GET /inventory/movements?reference=``) before sending: found → the earlier attempt
        landed (only its answer was lost) → ``applied``, nothing sent. Pushes of one stock row
        run one at a time (:func:`gateway.services.adjustments.stock_lock`).

        Right before the call the delta is journaled against the stock row's id
        (:func:`gateway.services.journal.expect`), so the level read back or polled later is
        cached without ``inventory.updated`` (echo suppression).

        Verdicts: 2xx → ``applied`` (the answered row cached with it); 422 ``INSUFFICIENT_STOCK``
        or any other 4xx → ``failed``; 5xx, 429, timeouts → no verdict
        (:class:`~gateway.services.adjustments.PushDeferred`), ``failed`` on the ``final`` attempt.

        Raises:
            NotFound: no such adjustment on this connection.
            PushDeferred: retry later (the attempt and its error are recorded).
        """
        async with self.db.read() as conn:
            row = await adjustments.load(conn, self.context.id, adjustment_id)
        if row["status"] != "pending":
            return render_adjustment(row)
        tenant_id = self.context.tenant_id
        product = await self._live("products", row["product_id"])
        location = await self._live("locations", row["location_id"])
        if product is None or location is None:
            gone = "product" if product is None else "location"
            return await adjustments.not_applied(self.db, tenant_id, adjustment_id, f"unknown_{gone}: the {gone} is "
                                                 "no longer on this connection", fatal=True, final=final)
        try:
            variant = self._variant_remote(product, row["variant_id"])
        except LookupError as exc:
            return await adjustments.not_applied(self.db, tenant_id, adjustment_id, f"unknown_variant: {exc}",
                                                 fatal=True, final=final)
        try:
            async with adjustments.stock_lock(self.db, self.context.id, row["product_id"], row["location_id"],
                                              row["variant_id"]), self._session() as client:
                return await self._push(client, adjustment_id, product, location, variant, final=final)
        except LockBusy as exc:
            return await adjustments.not_applied(self.db, tenant_id, adjustment_id, exc, fatal=False, final=final)

    async def _push(self, client: VendorClient, adjustment_id: str, product: dict[str, Any], location: dict[str, Any],
                    variant: str | None, *, final: bool) -> dict[str, Any]:
        """The push under the stock row's lock (see :meth:`push_adjustment`)."""
        tenant_id = self.context.tenant_id
        async with self.db.read() as conn:  # again, under the lock: another push may have settled it
            row = await adjustments.load(conn, self.context.id, adjustment_id)
        if row["status"] != "pending":
            return render_adjustment(row)
        key = f"tillgate-{adjustment_id}"
        store, pid = str(location["remote_id"]), str(product["remote_id"])
        try:
            if row["attempts"] > 0 and await self._landed(client, store, pid, variant, key):
                current = await self._stock_row(client, store, pid, variant)
                return await self._applied(adjustment_id, row, current)
            current = await self._stock_row(client, store, pid, variant)
        except VendorError as exc:
            return await adjustments.not_applied(self.db, tenant_id, adjustment_id, exc, fatal=not exc.retryable,
                                                 final=final)
        delta = Decimal(row["delta_milli"]) / _THOUSAND
        reason = row["reason"]
        note = f"{reason}: {row['reference']}"[:500] if row["reference"] else reason
        vendor_body = self._write_body("inventory", {
            "store_remote_id": store, "product_remote_id": pid, "variant_remote_id": variant, "quantity": delta,
            "reason": reason, "note": note, "reference": key}, {})
        async with self.db.transaction(tenant_id) as uow:  # journaled before the POS can report it
            await journal.expect(uow, connection_id=self.context.id, remote_id=str(current["id"]),
                                 delta_milli=row["delta_milli"], adjustment_id=adjustment_id,
                                 ttl=journal.window(self.settings))
        try:
            answer = await self._json(client, "POST", "/v1/inventory/stock/adjust", vendor_body)
        except Conflict as exc:
            return await adjustments.not_applied(
                self.db, tenant_id, adjustment_id, f"{exc.code}: TenantPOS refused a delta of {delta} for product "
                f"{product['id']} at location {location['id']} ({exc.detail})", fatal=True, final=final)
        except ValidationFailed as exc:
            return await adjustments.not_applied(self.db, tenant_id, adjustment_id, exc, fatal=True, final=final)
        except VendorError as exc:
            return await adjustments.not_applied(self.db, tenant_id, adjustment_id, exc, fatal=not exc.retryable,
                                                 final=final)
        stock = answer.get("stock") if isinstance(answer, dict) else None
        return await self._applied(adjustment_id, row, stock)

    async def _landed(self, client: VendorClient, store: str, product: str, variant: str | None, key: str) -> bool:
        """Whether the movement history holds the movement of ``reference`` ``key`` for this row."""
        params = {"storeId": store, "productId": product, "variantId": variant or "", "reference": key, "limit": 10}
        moves = await self._json(client, "GET", "/v1/inventory/movements", params=params)
        return any(isinstance(m, dict) and m.get("reference") == key for m in moves or [])

    async def _applied(self, adjustment_id: str, row: dict[str, Any], stock: dict[str, Any] | None) -> dict[str, Any]:
        """Settle ``applied`` and cache the stock row answered (``None``: the poll brings it)."""
        record = None
        if isinstance(stock, dict):
            maps = await self._maps_for("inventory", stock)
            try:
                record = self._record("inventory", stock, self._ctx(maps))
            except MappingError as exc:
                log.warning("tenantpos %s: the stock row answered cannot be mapped (%s)", self.context.id, exc)
        async with self.db.transaction(self.context.tenant_id) as uow:
            # the verdict first: a level event the answer emits comes after its adjustment.applied
            settled = await adjustments.settle(uow, adjustment_id, "applied")
            if record is not None:
                inventory_links.landed(uow, row, record.remote_id)  # a link's write is not a new change
                await self._upsert(uow, "inventory", record)
                await journal.close(uow, adjustment_id)
            return settled

    async def set_inventory_count(self, product_id: str, location_id: str, body: Any) -> dict[str, Any]:
        """Set on hand absolutely (``POST /v1/inventory/stock/set``), compare-and-set against
        ``expected_on_hand``: the row is read, compared, then set, under the stock row's lock.
        Returns the cached InventoryLevel (``inventory.updated`` when it changed).

        Raises:
            NotFound: unknown product or location.
            ValidationFailed: an unknown or missing variant; more than 3 decimals.
            Conflict: ``stale_count`` with the POS's current ``on_hand``.
        """
        product = await self._live("products", product_id)
        if product is None:
            raise NotFound(f"no product {product_id!r} on this connection")
        location = await self._live("locations", location_id)
        if location is None:
            raise NotFound(f"no location {location_id!r} on this connection")
        variants = product.get("variants") or []
        if body.variant_id and not any(v["id"] == body.variant_id for v in variants):
            raise field_error(("body", "variant_id"), "not a variant of this product", "unknown_variant")
        if variants and not body.variant_id:
            raise field_error(("body", "variant_id"), "this product has variants: name one", "variant_required")
        _milli(body.on_hand, ("body", "on_hand"))
        variant = self._variant_remote(product, body.variant_id)
        store, pid = str(location["remote_id"]), str(product["remote_id"])
        async with adjustments.stock_lock(self.db, self.context.id, product_id, location_id, body.variant_id), \
                self._session() as client:
            current = await self._stock_row(client, store, pid, variant)
            on_hand = Decimal(str(current.get("quantity"))).quantize(Decimal("0.001"))
            if body.expected_on_hand is not None and on_hand != body.expected_on_hand:
                raise Conflict(f"on hand is {on_hand}, not the expected {body.expected_on_hand}",
                               code="stale_count", on_hand=str(on_hand))
            if on_hand != body.on_hand:
                vendor_body = self._write_body("inventory", {
                    "store_remote_id": store, "product_remote_id": pid, "variant_remote_id": variant,
                    "quantity": body.on_hand, "reason": body.reason, "note": None,
                    "reference": f"tillgate-set-{uuid.uuid4().hex}"}, {})
                answer = await self._json(client, "POST", "/v1/inventory/stock/set", vendor_body,
                                          fields={"quantity": "on_hand"})
                current = answer.get("stock") if isinstance(answer, dict) else await self._stock_row(client, store, pid, variant)
        return await self._cache("inventory", current)

    async def set_low_stock_threshold(self, product_id: str, location_id: str, threshold: Decimal | None,
                                      variant_id: str | None = None) -> dict[str, Any]:
        """``PATCH /v1/inventory/stock/:storeId/:productId/threshold`` (``threshold`` in units of
        the product, up to 3 decimals; ``None`` clears it); the stock row answered is cached
        (``inventory.updated``, and ``inventory.low`` when the level is now at or below it).

        Raises:
            NotFound: unknown product or location. ValidationFailed: a bad variant or value.
        """
        product = await self._live("products", product_id)
        location = await self._live("locations", location_id)
        if product is None or location is None:
            raise NotFound("no such product or location on this connection")
        if threshold is not None:
            if threshold < 0:
                raise field_error(("body", "low_stock_threshold"), "must not be negative", "negative")
            _milli(threshold, ("body", "low_stock_threshold"))
        try:
            variant = self._variant_remote(product, variant_id)
        except LookupError as exc:
            raise field_error(("body", "variant_id"), str(exc), "unknown_variant") from exc
        async with self._session() as client:
            raw = await self._json(client, "PATCH", f"/v1/inventory/stock/{location['remote_id']}/{product['remote_id']}/threshold",
                                   {"lowStockThreshold": threshold, "variantId": variant})
        return await self._cache("inventory", raw)

    async def low_stock(self) -> list[dict[str, Any]]:
        """``GET /v1/inventory/stock/low`` (every page): the low rows as cached InventoryLevels."""
        out = []
        async with self._session() as client:
            async for page in self._pager().pages(client, "/v1/inventory/stock/low"):
                for raw in page.records:
                    out.append(await self._cache("inventory", raw))
        return out
