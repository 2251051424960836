"""The HQ/Store POS connector: JWT login with refresh, enveloped page-number lists, exact units.

Transport is a :class:`~gateway.sdk.http.VendorClient` (:class:`HQStoreClient`) with
:class:`HQStoreAuth` (``POST /api/v1/auth/login`` with username + PIN, ``POST
/api/v1/auth/refresh`` before the access token expires and once on a 401); shape is
``mappings/hqstore/*.yaml``. Units at the edge: money in integer minor units, quantities in
integer thousandths, tax rates in integer basis points (vendor doc "Create Sale Body"); the
unified side is ``Decimal`` in the major unit / the product's unit / percent. Every choice made
where the vendor doc (``vendor-docs/hqstore-pos-api.txt``) is silent is in ``README.md``.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, ClassVar

import httpx
from sqlalchemy import select, update

from gateway import jsonutil
from gateway.errors import Conflict, NotFound, TillgateError, VendorError, field_error
from gateway.mapping import (
    MappingContext,
    MappingError,
    MappingSpec,
    currency_exponent,
    dumps_vendor_body,
    load_connector_mappings,
)
from gateway.sdk.auth import LoginWithRefresh
from gateway.sdk.connector import Page, RemoteRecord, load_manifest, page_fingerprint
from gateway.sdk.http import VendorClient, VendorNotFound, VendorRequestRejected
from gateway.sdk.pagination import PageNumberPaginator
from gateway.sdk.remote import RemoteConnector, since_param, vendor_time
from gateway.services import adjustments, inventory_links, journal, records
from gateway.services.adjustments import render_adjustment
from gateway.storage import tables as t
from gateway.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

VENDOR = "hqstore"
API = "/api/v1"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
#: list endpoint of each paginated entity (vendor doc: Products, Customers, Sales, Inventory)
LIST_PATHS = {"products": f"{API}/products", "customers": f"{API}/customers", "orders": f"{API}/sales",
              "inventory": f"{API}/inventory"}
#: the ``entity`` of ``GET /api/v1/sync/pull`` for each incremental entity
PULL_ENTITIES = {"products": "products", "customers": "customers", "orders": "sales"}
#: entities whose records refer to others, and which (the id maps they resolve against)
REFERENCES = {"products": ("categories",), "orders": ("customers", "products", "locations"),
              "inventory": ("products", "locations")}
#: terminal id of sales created through the gateway (read back as ``source: api``)
TERMINAL_ID = "TILLGATE"
#: bumped when code (not YAML) changes what a page maps to (the tax group enrichment)
MAPPING_CODE_VERSION = 1
_MAPPINGS = load_connector_mappings(VENDOR)
_HUNDRED = Decimal(100)
_MILLI = Decimal(1000)


# -- small helpers -----------------------------------------------------------------------------------






def effective_rate(rates: Iterable[dict[str, Any]]) -> Decimal:
    """The combined percent of tax components ``[{rate (basis points), isCompound}]`` in
    ``sortOrder``: simple rates add up; a compound rate applies to the price plus the taxes before
    it, so ``8.25 %`` then compound ``5 %`` is ``(1.0825 x 1.05 - 1) x 100 = 13.6625``.
    Returns an exact ``Decimal`` percent (trailing zeros dropped)."""
    factor_simple = Decimal(0)
    compound = Decimal(1)
    for rate in rates:
        fraction = Decimal(int(rate.get("rate") or 0)) / Decimal(10000)
        if rate.get("isCompound"):
            compound *= 1 + factor_simple
            factor_simple = Decimal(0)
            compound *= 1 + fraction
        else:
            factor_simple += fraction
    total = (compound * (1 + factor_simple) - 1) * _HUNDRED
    return total.quantize(Decimal(1)) if total == total.to_integral_value() else total.normalize()


def line_taxes(taxable: Decimal, taxes: list[dict[str, Any]], exponent: int) -> list[Decimal]:
    """Tax amounts (major unit, ``exponent`` places) of ``taxes`` ``[{rate (percent Decimal),
    compound}]`` in order on ``taxable`` (major unit): a simple tax is ``taxable x rate / 100``,
    a compound one is on ``taxable`` plus the taxes before it; each rounded half up on its own
    (README "Sales": what the HQ/Store server checks)."""
    step = Decimal(1).scaleb(-exponent)
    amounts: list[Decimal] = []
    for tax in taxes:
        base = taxable + (sum(amounts, Decimal(0)) if tax["compound"] else Decimal(0))
        amounts.append((base * tax["rate"] / _HUNDRED).quantize(step, rounding=ROUND_HALF_UP))
    return amounts


# -- transport -----------------------------------------------------------------------------------------
class HQStoreAuth(LoginWithRefresh):
    """Username + PIN login and refresh-token renewal (vendor doc "Authentication").

    ``POST {base}/api/v1/auth/login`` ``{"username", "pin"}`` answers ``{"success": true, "data":
    {"accessToken", "refreshToken", "user", "permissions"}}``; ``POST {base}/api/v1/auth/refresh``
    ``{"refreshToken"}`` answers a new pair (README: the doc gives neither its body nor the token
    lifetime). The access token's expiry is its JWT ``exp`` claim, read unverified, else
    ``default_ttl``; :class:`~gateway.sdk.auth.LoginWithRefresh` refreshes ``skew`` seconds before
    it and once on a 401, and logs in again when the refresh token is refused.

    Args:
        username, pin: the HQ/Store user's credentials (never logged; redacted from messages).
        base_url: the server root the ``/api/v1`` paths hang off (may have a path prefix).
        clock: epoch seconds (tests pass a fake one to expire tokens without waiting).
    """

    def __init__(self, username: str, pin: str, base_url: str, *, skew: float = 30.0, default_ttl: float = 900.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(skew=skew, default_ttl=default_ttl, clock=clock)
        self._username, self._pin = username, pin
        self._base = base_url.rstrip("/")

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Request:
        return httpx.Request("POST", f"{self._base}{path}", content=jsonutil.dumps(body), headers=JSON_HEADERS)

    def login_request(self, request: httpx.Request) -> httpx.Request:
        """``POST /api/v1/auth/login`` with ``{"username", "pin"}``."""
        return self._post(f"{API}/auth/login", {"username": self._username, "pin": self._pin})

    def refresh_request(self, request: httpx.Request, refresh_token: str) -> httpx.Request:
        """``POST /api/v1/auth/refresh`` with ``{"refreshToken"}``."""
        return self._post(f"{API}/auth/refresh", {"refreshToken": refresh_token})

    def secrets(self) -> tuple[str, ...]:
        """The PIN and the tokens held (redacted from vendor messages)."""
        return (*super().secrets(), self._pin)


class HQStoreClient(VendorClient):
    """:class:`VendorClient` that also refuses a 2xx answer whose envelope says ``"success": false``
    (the doc: ``error`` is present "only on failure"), as :class:`VendorRequestRejected` (502)."""

    def classify(self, outcome: httpx.Response | BaseException) -> VendorError | None:
        """The kit's classification, plus ``success: false`` inside a 2xx body."""
        error = super().classify(outcome)
        if error is None and isinstance(outcome, httpx.Response) and b'"success"' in outcome.content[:200]:
            try:
                doc = jsonutil.loads(outcome.content)
            except jsonutil.MalformedJSON:
                return None
            if isinstance(doc, dict) and doc.get("success") is False:
                message = doc.get("error") if isinstance(doc.get("error"), str) else "no message"
                return VendorRequestRejected(
                    f"{self.vendor} answered {outcome.request.method} {outcome.request.url.path} with success false: "
                    f"{message[:200]}", vendor=self.vendor, vendor_status=outcome.status_code)
        return error


def unwrap(body: Any, what: str) -> Any:
    """``data`` of a ``{"success": true, "data": ...}`` envelope.

    Raises:
        VendorError: ``vendor_invalid_response`` (502) when ``body`` is not that envelope.
    """
    if not isinstance(body, dict) or body.get("success") is not True or "data" not in body:
        raise VendorError(f"HQ/Store {what}: the answer is not a success envelope", vendor=VENDOR,
                          code="vendor_invalid_response")
    return body["data"]


class HQStoreConnector(RemoteConnector):
    """HQ/Store POS, HQ server (``vendor-docs/hqstore-pos-api.txt``).

    Reads (``fetch``): stores → locations, departments → categories, products (with their tax
    group's rates), customers, sales → orders, inventory levels; products, customers and orders
    are incremental through ``GET /api/v1/sync/pull`` when the connection has a ``sync_token``.
    Writes: products (create, update, delete = deactivate), customers (create, update), sales
    (``create_order``, ``void_order``), stock deltas (``create_adjustment`` / ``push_adjustment``).
    Also :meth:`product_by_barcode` and :meth:`transfer_movements`.
    """

    manifest: ClassVar[dict[str, Any]] = load_manifest("connectors.hqstore")
    mappings: ClassVar[dict[str, MappingSpec]] = _MAPPINGS
    vendor_title: ClassVar[str] = "HQ/Store"
    vendor_id: ClassVar[str] = VENDOR
    client_class: ClassVar[type[VendorClient]] = HQStoreClient
    max_page_size: ClassVar[int] = 100
    #: the clock the access token's expiry is judged by (tests replace it)
    auth_clock: ClassVar[Callable[[], float]] = staticmethod(time.time)

    # -- transport ---------------------------------------------------------------------------------
    def auth(self) -> HQStoreAuth:
        """:class:`HQStoreAuth` from the ``username`` and ``pin`` credentials."""
        credentials = self.context.credentials or {}
        return HQStoreAuth(str(credentials.get("username") or ""), str(credentials.get("pin") or ""),
                           str(self.settings["base_url"]), clock=type(self).auth_clock,
                           default_ttl=int(self.settings.get("token_ttl_seconds") or 900))

    @property
    def currency(self) -> str:
        """The connection's ISO 4217 currency (HQ/Store sends bare integers of its minor unit)."""
        return str(self.settings.get("currency") or "USD").upper()

    @property
    def exponent(self) -> int:
        """Minor-unit exponent of :attr:`currency` (2 for USD: 999 minor units are 9.99)."""
        return currency_exponent(self.currency)

    @property
    def sync_token(self) -> str | None:
        """The store's sync token (vendor doc "Sync"), when the connection has one."""
        token = (self.context.credentials or {}).get("sync_token")
        return token if isinstance(token, str) and token else None

    # -- life cycle --------------------------------------------------------------------------------
    async def check(self) -> None:
        """Log in and ``GET /api/v1/auth/me``.

        Raises:
            VendorCredentialsRejected: 424, the login (or the token) was refused.
            VendorError: the vendor failed or answered something that is not the envelope.
        """
        async with self._session() as client:
            me = unwrap(await client.json("GET", f"{API}/auth/me"), "GET /auth/me")
        if not isinstance(me, dict):
            raise VendorError("HQ/Store GET /auth/me answered no user", vendor=VENDOR, code="vendor_invalid_response")

    # -- mapping -------------------------------------------------------------------------------------
    def _record(self, entity: str, raw: dict[str, Any], ctx: MappingContext) -> RemoteRecord:
        """Map one vendor object; ``remote_updated_at``/``created_at`` are its ``updatedAt``/``createdAt``.

        Raises:
            MappingError: the object does not fit the entity's mapping (names the field and value).
        """
        remote_id, body = _MAPPINGS[entity].read(raw, ctx)
        if entity == "inventory":
            available = body["on_hand"] - self.safety_stock
            body["available"] = available if available > 0 else Decimal(0)
        return RemoteRecord(remote_id=remote_id, body=body, raw=raw, remote_updated_at=vendor_time(raw.get("updatedAt")),
                            created_at=vendor_time(raw.get("createdAt")))

    @staticmethod
    def _with_taxes(product: Any, groups: dict[str, list[dict[str, Any]]]) -> Any:
        """A copy of a listed product with its tax group's ``taxRates`` (when the list left them
        out) and ``_tillgate_tax_rate`` (their effective percent, :func:`effective_rate`)."""
        if not isinstance(product, dict):
            return product
        rates = product.get("taxRates")
        if not isinstance(rates, list):
            rates = groups.get(str(product.get("taxGroupId")), []) if product.get("taxGroupId") else []
        ordered = sorted((r for r in rates if isinstance(r, dict)), key=lambda r: (r.get("sortOrder") or 0, str(r.get("id"))))
        return {**product, "taxRates": ordered, "_tillgate_tax_rate": effective_rate(ordered)}

    # -- reads -------------------------------------------------------------------------------------
    def _pager(self) -> PageNumberPaginator:
        return PageNumberPaginator(page_param="page", size_param="pageSize", page_size=self.page_size,
                                   records_path="data", total_path="total", page_path="page",
                                   page_size_path="pageSize")

    async def _tax_groups(self, client: VendorClient) -> dict[str, list[dict[str, Any]]]:
        """``GET /api/v1/taxes/groups``: group id → its rates ``[{id, name, rate, isCompound, sortOrder}]``."""
        data = unwrap(await client.json("GET", f"{API}/taxes/groups"), "GET /taxes/groups")
        if not isinstance(data, list):
            raise VendorError("HQ/Store GET /taxes/groups: data is not a list", vendor=VENDOR,
                              code="vendor_invalid_response")
        return {str(g.get("id")): [r for r in g.get("taxRates") or [] if isinstance(r, dict)]
                for g in data if isinstance(g, dict)}

    async def fetch(self, entity: str, *, since: datetime | None = None,
                    checkpoint: dict[str, Any] | None = None) -> AsyncIterator[Page]:
        """Read ``entity`` page by page.

        - ``locations``: ``GET /api/v1/stores`` (one page). ``categories``: ``GET
          /api/v1/departments``, one page per depth level (roots first), so parents resolve.
        - ``products``, ``customers``, ``orders``, ``inventory``: ``GET <list>?page=&pageSize=``
          (the ``total``/``page``/``pageSize`` envelope), resumable from ``checkpoint``;
          ``orders`` from the ``sales_date_from`` setting when set (``date_from``).
        - with ``since`` and a ``sync_token``, ``products``, ``customers`` and ``orders`` read
          ``GET /api/v1/sync/pull?entity=&since=`` (``X-Sync-Token``) instead: only what changed.

        Raises:
            OperationNotSupported: an entity HQ/Store does not have.
            VendorError: the vendor failed (``PaginationLoop`` for a list that does not advance).
        """
        async with self._session() as client:
            if entity == "locations":
                stores = unwrap(await client.json("GET", f"{API}/stores"), "GET /stores")
                ctx = self._ctx()
                yield Page([self._vendor_record("locations", s, ctx) for s in stores or []], None)
                return
            if entity == "categories":
                async for page in self._fetch_categories(client):
                    yield page
                return
            if entity not in LIST_PATHS:
                raise self._unsupported(f"reading {entity} from the vendor")
            maps = {ref: await self._id_map(ref) for ref in REFERENCES.get(entity, ())}
            groups = await self._tax_groups(client) if entity == "products" else {}
            pull = entity in PULL_ENTITIES and self.sync_token is not None and (
                since is not None or (checkpoint or {}).get("since") is not None)
            if pull:
                since_text = (checkpoint or {}).get("since") or since_param(since)  # type: ignore[arg-type]
                params = {"entity": PULL_ENTITIES[entity], "since": since_text}
                path, headers = f"{API}/sync/pull", {"X-Sync-Token": self.sync_token}
            else:
                since_text = None
                params = {}
                if entity == "orders" and self.settings.get("sales_date_from"):
                    params["date_from"] = str(self.settings["sales_date_from"])
                path, headers = LIST_PATHS[entity], {}
            start = {"page": int(checkpoint["page"])} if checkpoint and checkpoint.get("page") else None
            ctx = self._ctx(maps)
            digest = hashlib.sha256(jsonutil.dumps_sorted(groups)).hexdigest()
            base = self.fingerprint_base(entity, _MAPPINGS[entity].digest, MAPPING_CODE_VERSION, maps, digest)
            async for page in self._pager().pages(client, path, params=params, start=start, headers=headers):
                after = page.next_position
                yield Page(load=lambda page=page: self._load(entity, page.records, ctx, groups),
                           checkpoint=None if after is None else {**after, "since": since_text},
                           fingerprint=None if pull else page_fingerprint(base, page.digest))

    def _load(self, entity: str, raws: list[Any], ctx: MappingContext,
              groups: dict[str, list[dict[str, Any]]]) -> list[RemoteRecord]:
        """Map one page; stock rows of products or stores not cached yet are skipped (the next poll has them)."""
        out = []
        for raw in raws:
            if entity == "products":
                raw = self._with_taxes(raw, groups)
            if entity != "inventory":
                out.append(self._vendor_record(entity, raw, ctx))
                continue
            try:
                out.append(self._record("inventory", raw, ctx))
            except MappingError as exc:
                log.info("hqstore %s: skipping a stock row (%s)", self.context.id, exc)
        return out

    async def _fetch_categories(self, client: VendorClient) -> AsyncIterator[Page]:
        """Departments one depth level per page: after a level is stored, the next level's
        ``parentId`` resolves to it (a department whose parent is unknown is a root)."""
        data = unwrap(await client.json("GET", f"{API}/departments"), "GET /departments")
        departments = [d for d in data or [] if isinstance(d, dict)]
        ids = {str(d.get("id")) for d in departments}
        level = [d for d in departments if not d.get("parentId") or str(d["parentId"]) not in ids]
        done: set[str] = set()
        while level:
            maps = {"categories": await self._id_map("categories")}
            ctx = self._ctx(maps)
            done.update(str(d.get("id")) for d in level)
            following = [d for d in departments if str(d.get("id")) not in done and str(d.get("parentId")) in done]
            yield Page([self._vendor_record("categories", d, ctx) for d in level], None)
            level = following
        if not departments:
            yield Page([], None)

    # -- cache helpers -----------------------------------------------------------------------------
    async def _maps_for(self, entity: str, raw: dict[str, Any]) -> dict[str, dict[str, str]]:
        """The id maps one vendor record of ``entity`` resolves against (only its own references)."""
        maps: dict[str, dict[str, str]] = {}
        if entity == "products":
            maps["categories"] = await self._id_map("categories", [raw.get("departmentId")])
        elif entity == "orders":
            items = raw.get("items") if isinstance(raw.get("items"), list) else []
            maps["products"] = await self._id_map("products", [i.get("productId") for i in items if isinstance(i, dict)])
            maps["customers"] = await self._id_map("customers", [raw.get("customerId")])
            maps["locations"] = await self._id_map("locations", [raw.get("storeId")])
        elif entity == "inventory":
            maps["products"] = await self._id_map("products", [raw.get("productId")])
            maps["locations"] = await self._id_map("locations", [raw.get("storeId")])
        return maps

    async def _send(self, client: VendorClient, method: str, path: str, body: dict[str, Any]) -> Any:
        """``method path`` with a JSON body; the envelope's ``data``."""
        answer = await client.json(method, path, content=dumps_vendor_body(body), headers=JSON_HEADERS)
        return unwrap(answer, f"{method} {path}")

    # -- catalog -------------------------------------------------------------------------------------
    async def _tax_group_for(self, client: VendorClient, body: Any) -> str | None:
        """The tax group whose rates are exactly the body's ``taxes`` (or its one ``tax_rate``);
        ``None`` for no tax. HQ/Store products name a group; the gateway does not create groups.

        Raises:
            ValidationFailed: ``unknown_tax_group`` when no group has those rates.
        """
        if body.taxes:
            wanted = [(tax.rate, bool(tax.compound)) for tax in body.taxes]
        elif body.tax_rate is not None and body.tax_rate != 0:
            wanted = [(body.tax_rate, False)]
        else:
            return None
        for group_id, rates in (await self._tax_groups(client)).items():
            ordered = sorted(rates, key=lambda r: (r.get("sortOrder") or 0, str(r.get("id"))))
            have = [(Decimal(int(r.get("rate") or 0)) / _HUNDRED, bool(r.get("isCompound"))) for r in ordered]
            if have == wanted:
                return group_id
        raise field_error(("body", "taxes" if body.taxes else "tax_rate"), "no HQ/Store tax group has exactly these "
                       "rates; create the group at HQ first", "unknown_tax_group", code="unknown_tax_group")

    def _check_catalog(self, body: Any) -> None:
        if body.variants:
            raise field_error(("body", "variants"), "HQ/Store products have no variants", "unsupported_by_vendor")
        if body.translations:
            raise field_error(("body", "translations"), "HQ/Store products have no translations", "unsupported_by_vendor")
        if body.category_ids is not None and len(body.category_ids) > 1:
            raise field_error(("body", "category_ids"), "an HQ/Store product is in one department", "unsupported_by_vendor")
        if body.tax_inclusive:
            raise field_error(("body", "tax_inclusive"), "HQ/Store prices exclude tax", "unsupported_by_vendor")
        if body.unit not in (None, "each"):
            raise field_error(("body", "unit"), "HQ/Store products have no unit of measure", "unsupported_by_vendor")
        currency = getattr(body, "currency", None)
        if currency is not None and currency != self.currency:
            raise field_error(("body", "currency"), f"this connection's currency is {self.currency}", "currency_mismatch")

    async def _product_body(self, client: VendorClient, body: Any, *, partial: bool) -> dict[str, Any]:
        self._check_catalog(body)
        data = body.model_dump(exclude_unset=partial)
        if not partial and not data.get("sku"):
            if not data.get("barcode"):
                raise field_error(("body", "sku"), "HQ/Store products need a SKU (or a barcode to use as one)", "missing",
                               code="sku_required")
            data["sku"] = data["barcode"]
        if body.category_ids:
            if not await self._remote_map("categories", body.category_ids):
                raise field_error(("body", "category_ids", "0"), "no such category on this connection", "unknown_category")
        if not partial or "taxes" in data or "tax_rate" in data:
            data["_tax_group_id"] = await self._tax_group_for(client, body)
        remote = {"categories": await self._remote_map("categories", body.category_ids or [])}
        return self._write_body("products", data, remote)

    async def _cache_product(self, client: VendorClient, raw: Any) -> dict[str, Any]:
        return await self._cache("products", self._with_taxes(raw, await self._tax_groups(client)))

    async def create_product(self, body: Any) -> dict[str, Any]:
        """``POST /api/v1/products`` (doc "Create/Update Product Body"): price and cost to integer
        minor units (strict), ``category_ids[0]`` → ``departmentId``, the tax components → the
        ``taxGroupId`` with exactly those rates; the product answered is cached.

        Raises:
            ValidationFailed: variants, translations, several categories, tax-inclusive prices, a
                unit, another currency, no SKU nor barcode, ``unknown_tax_group``, a price with
                more decimals than the currency.
            VendorRequestRejected: 502, HQ/Store refused it (e.g. a SKU it already has: 409).
        """
        async with self._session() as client:
            vendor_body = await self._product_body(client, body, partial=False)
            raw = await self._send(client, "POST", f"{API}/products", vendor_body)
            return await self._cache_product(client, raw)

    async def update_product(self, product_id: str, body: Any) -> dict[str, Any]:
        """``PUT /api/v1/products/:id`` with the fields given; the product answered is cached.

        Raises:
            NotFound: no live product ``product_id``. ValidationFailed: as :meth:`create_product`.
        """
        current = await self._live("products", product_id)
        if current is None:
            raise NotFound(f"no product {product_id!r} on this connection")
        async with self._session() as client:
            vendor_body = await self._product_body(client, body, partial=True)
            path = f"{API}/products/{current['remote_id']}"
            raw = await self._send(client, "PUT", path, vendor_body) if vendor_body else \
                unwrap(await client.json("GET", path), f"GET {path}")
            return await self._cache_product(client, raw)

    async def delete_product(self, product_id: str) -> dict[str, Any]:
        """``DELETE /api/v1/products/:id``: HQ/Store only deactivates (``isActive: false``), so the
        product stays cached with ``active: false`` (``product.updated``).

        Raises:
            NotFound: no live product ``product_id``.
        """
        current = await self._live("products", product_id)
        if current is None:
            raise NotFound(f"no product {product_id!r} on this connection")
        async with self._session() as client:
            path = f"{API}/products/{current['remote_id']}"
            await client.json("DELETE", path)
            raw = unwrap(await client.json("GET", path), f"GET {path}")
            return await self._cache_product(client, raw)

    async def product_by_barcode(self, barcode: str) -> dict[str, Any] | None:
        """``GET /api/v1/products/barcode/:barcode``: the product (cached as read), or ``None``
        when HQ/Store has no product with that barcode.

        Raises:
            ValidationFailed: an empty barcode or one with ``/``.
        """
        if not isinstance(barcode, str) or not barcode.strip() or "/" in barcode or len(barcode) > 64:
            raise field_error(("barcode",), "a barcode is 1 to 64 characters without /", "invalid_barcode")
        async with self._session() as client:
            try:
                raw = unwrap(await client.json("GET", f"{API}/products/barcode/{barcode.strip()}"), "GET /products/barcode")
            except VendorNotFound:
                return None
            return await self._cache_product(client, raw)

    # -- customers -----------------------------------------------------------------------------------
    def _customer_body(self, body: Any, *, partial: bool) -> dict[str, Any]:
        address = body.address
        if address is not None and any(getattr(address, f) for f in ("line2", "city", "region", "postal_code", "country")):
            raise field_error(("body", "address"), "an HQ/Store address is one line: give line1 only", "unsupported_by_vendor")
        currency = getattr(body, "currency", None)
        if currency is not None and currency != self.currency:
            raise field_error(("body", "currency"), f"this connection's currency is {self.currency}", "currency_mismatch")
        return self._write_body("customers", body.model_dump(exclude_unset=partial), {})

    async def create_customer(self, body: Any) -> dict[str, Any]:
        """``POST /api/v1/customers`` (name, email, phone, address line, credit limit in minor
        units); the customer answered is cached.

        Raises:
            ValidationFailed: an address with more than line1, another currency.
        """
        vendor_body = self._customer_body(body, partial=False)
        async with self._session() as client:
            raw = await self._send(client, "POST", f"{API}/customers", vendor_body)
        return await self._cache("customers", raw)

    async def update_customer(self, customer_id: str, body: Any) -> dict[str, Any]:
        """``PUT /api/v1/customers/:id`` with the fields given; the customer answered is cached.

        Raises:
            NotFound: no live customer. ValidationFailed: as :meth:`create_customer`.
        """
        current = await self._live("customers", customer_id)
        if current is None:
            raise NotFound(f"no customer {customer_id!r} on this connection")
        vendor_body = self._customer_body(body, partial=True)
        path = f"{API}/customers/{current['remote_id']}"
        async with self._session() as client:
            raw = await self._send(client, "PUT", path, vendor_body) if vendor_body else \
                unwrap(await client.json("GET", path), f"GET {path}")
        return await self._cache("customers", raw)

    # -- sales -------------------------------------------------------------------------------------
    async def _default_location(self) -> dict[str, Any]:
        """The ``default_store_id`` setting's location, else the only cached location."""
        wanted = self.settings.get("default_store_id")
        known = await self._id_map("locations")
        if wanted and str(wanted) in known:
            location = await self._live("locations", known[str(wanted)])
            if location is not None:
                return location
        if len(known) == 1:
            location = await self._live("locations", next(iter(known.values())))
            if location is not None:
                return location
        raise field_error(("body", "location_id"), "give location_id: this connection has several stores (or none "
                       "synced yet) and no default_store_id", "missing", code="location_required")

    async def _line_product(self, line: Any, loc: tuple[str, ...]) -> dict[str, Any]:
        product = await self._live("products", line.product_id) if line.product_id else None
        if product is None and line.sku and not line.product_id:
            async with self.db.read() as conn:
                product = await records.find_product_by_sku(conn, connection_id=self.context.id, sku=line.sku)
        if product is None:
            raise field_error((*loc, "product_id"), "no such product on this connection", "unknown_product")
        return product

    def _exact(self, value: Decimal, loc: tuple[str, ...]) -> Decimal:
        """``value`` (major unit) if it has at most the currency's decimals, else a 422."""
        step = Decimal(1).scaleb(-self.exponent)
        if value.quantize(step) != value:
            raise field_error(loc, f"{self.currency} amounts have at most {self.exponent} decimals", "too_precise")
        return value.quantize(step)

    async def price_order(self, client: VendorClient, body: Any) -> dict[str, Any]:
        """Price an ``OrderCreate`` as the till does, in unified units (``Decimal`` money in the
        major unit, quantities in units, rates in percent), ready for ``mappings/hqstore/orders.yaml``.

        Per line: the live product (``GET /api/v1/products/:id`` "with tax rates") gives the
        catalog price when ``unit_price`` is omitted and the tax components; ``net = quantity x
        unit_price`` rounded half up to the currency; ``taxable = net - discount``; taxes by
        :func:`line_taxes`; ``total = taxable + taxes``; ``tax_rate`` the effective percent.
        Totals add the lines up; payments must cover ``total``.

        Raises:
            ValidationFailed: variants, unknown products, customer or location, a discount above
                the line, amounts finer than the currency, no payment, payments short of the
                total, ``placed_at``, another currency.
            VendorError: a product could not be read from HQ/Store.
        """
        if body.placed_at is not None:
            raise field_error(("body", "placed_at"), "HQ/Store dates a sale when it is made", "unsupported_by_vendor")
        if body.currency is not None and body.currency != self.currency:
            raise field_error(("body", "currency"), f"this connection's currency is {self.currency}", "currency_mismatch")
        location = await self._live("locations", body.location_id) if body.location_id else await self._default_location()
        if location is None:
            raise field_error(("body", "location_id"), "no such location on this connection", "unknown_location")
        if body.customer_id and await self._live("customers", body.customer_id) is None:
            raise field_error(("body", "customer_id"), "no such customer on this connection", "unknown_customer")
        if not body.payments:
            raise field_error(("body", "payments"), "an HQ/Store sale needs at least one payment", "missing",
                           code="payment_required")
        lines, remote_products = [], {}
        for n, line in enumerate(body.lines):
            loc = ("body", "lines", str(n))
            if line.variant_id:
                raise field_error((*loc, "variant_id"), "HQ/Store products have no variants", "unsupported_by_vendor")
            product = await self._line_product(line, loc)
            remote_products[product["id"]] = product["remote_id"]
            path = f"{API}/products/{product['remote_id']}"
            live = unwrap(await client.json("GET", path), f"GET {path}")
            rates = sorted((r for r in live.get("taxRates") or [] if isinstance(r, dict)),
                           key=lambda r: (r.get("sortOrder") or 0, str(r.get("id"))))
            price = line.unit_price if line.unit_price is not None else \
                Decimal(int(live["sellPrice"])).scaleb(-self.exponent)
            price = self._exact(price, (*loc, "unit_price"))
            discount = self._exact(line.discount, (*loc, "discount"))
            net = (line.quantity * price).quantize(Decimal(1).scaleb(-self.exponent), rounding=ROUND_HALF_UP)
            if discount > net:
                raise field_error((*loc, "discount"), "the discount is more than the line", "discount_too_large")
            taxes = [{"name": str(r.get("name") or "Tax"), "rate": Decimal(int(r.get("rate") or 0)) / _HUNDRED,
                      "compound": bool(r.get("isCompound")), "sort_order": int(r.get("sortOrder") or 0)} for r in rates]
            amounts = line_taxes(net - discount, taxes, self.exponent)
            for tax, amount in zip(taxes, amounts, strict=True):
                tax["amount"] = amount
            tax_amount = sum(amounts, Decimal(0))
            lines.append({"product_id": product["id"], "name": str(live.get("name") or product.get("name") or ""),
                          "quantity": line.quantity, "unit_price": price, "net": net, "discount": discount,
                          "tax_rate": effective_rate(rates), "tax_amount": tax_amount, "taxes": taxes,
                          "total": net - discount + tax_amount})
        subtotal = sum((line["net"] for line in lines), Decimal(0))
        discount_total = sum((line["discount"] for line in lines), Decimal(0))
        tax_total = sum((line["tax_amount"] for line in lines), Decimal(0))
        total = subtotal - discount_total + tax_total
        payments = []
        for n, payment in enumerate(body.payments):
            payments.append({"method": payment.method, "reference": payment.reference,
                             "amount": self._exact(payment.amount, ("body", "payments", str(n), "amount"))})
        paid = sum((p["amount"] for p in payments), Decimal(0))
        if paid < total:
            raise field_error(("body", "payments"), f"the payments ({paid}) do not cover the total ({total})",
                           "payment_short", code="payment_short")
        return {"number": body.number or f"TG-{uuid.uuid4().hex[:12].upper()}", "location_id": location["id"],
                "customer_id": body.customer_id, "subtotal": subtotal, "discount_total": discount_total,
                "tax_total": tax_total, "total": total, "lines": lines, "payments": payments,
                "_remote": {"products": remote_products, "locations": {location["id"]: location["remote_id"]}}}

    async def create_order(self, body: Any) -> dict[str, Any]:
        """``POST /api/v1/sales`` (doc "Create Sale Body"), priced by :meth:`price_order` and
        converted by ``orders.yaml`` (quantity ``"2"`` → ``2000``, ``"9.99"`` → ``999``,
        ``"8.25"`` % → ``825``); the sale answered is cached (``order.created``) and the sold
        products' stock at the store re-read and cached.

        Raises:
            ValidationFailed: see :meth:`price_order`; a method HQ/Store lacks (none: all map).
            Conflict: ``duplicate_receipt_number`` (the store already has a sale with that number).
            VendorRequestRejected: 502, HQ/Store refused the sale.
        """
        async with self._session() as client:
            data = await self.price_order(client, body)
            remote = {**data.pop("_remote"),
                      "customers": await self._remote_map("customers", [body.customer_id])}
            vendor_body = self._write_body("orders", data, remote)
            try:
                sale = await self._send(client, "POST", f"{API}/sales", vendor_body)
            except VendorRequestRejected as exc:
                if exc.extra.get("vendor_status") == 409:
                    raise Conflict(f"HQ/Store already has a sale numbered {data['number']!r} at this store",
                                   code="duplicate_receipt_number") from exc
                raise
            order = await self._cache("orders", sale)
            await self._refresh_levels(client, vendor_body["storeId"], [i["productId"] for i in vendor_body["items"]])
        return order

    async def void_order(self, order_id: str, body: Any = None) -> dict[str, Any]:
        """``PUT /api/v1/sales/:id/void`` ``{"reason"}``; the sale answered is cached
        (``order.voided``) and its products' stock re-read (a void puts the stock back).

        Raises:
            NotFound: no live order. Conflict: ``order_not_voidable`` (already voided, here or at HQ/Store).
        """
        order = await self._live("orders", order_id)
        if order is None:
            raise NotFound(f"no order {order_id!r} on this connection")
        if order["status"] != "completed":
            raise Conflict(f"order {order_id} is {order['status']}", code="order_not_voidable")
        reason = getattr(body, "reason", None) if body is not None else None
        async with self._session() as client:
            try:
                sale = await self._send(client, "PUT", f"{API}/sales/{order['remote_id']}/void", {"reason": reason})
            except VendorRequestRejected as exc:
                if exc.extra.get("vendor_status") != 409:
                    raise
                raise Conflict(f"order {order_id} was already voided at HQ/Store", code="order_not_voidable") from exc
            voided = await self._cache("orders", sale, event_type="order.voided")
            await self._refresh_levels(client, sale.get("storeId"), [i.get("productId") for i in sale.get("items") or []])
        return voided

    async def list_sales(self, *, date_from: date | None = None, date_to: date | None = None,
                         location_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Sales by date and store: ``GET /api/v1/sales?date_from=&date_to=&store_id=&status=``
        (doc "Sales"; dates inclusive, ``YYYY-MM-DD``), every page; each sale is cached (an
        unchanged one writes nothing) and returned as the unified Order, oldest first.

        Args:
            date_from, date_to: calendar days (inclusive), or ``None`` for no bound.
            location_id: the gateway id of a store location, or ``None`` for every store.
            status: ``completed`` or ``voided``, or ``None`` for both.

        Raises:
            ValidationFailed: an unknown location or status, or ``date_from`` after ``date_to``.
            VendorError: the vendor failed.
        """
        params: dict[str, Any] = {}
        if date_from is not None and date_to is not None and date_from > date_to:
            raise field_error(("date_from",), "date_from is after date_to", "date_range")
        if date_from is not None:
            params["date_from"] = date_from.isoformat()
        if date_to is not None:
            params["date_to"] = date_to.isoformat()
        if location_id is not None:
            location = await self._live("locations", location_id)
            if location is None:
                raise field_error(("location_id",), "no such location on this connection", "unknown_location")
            params["store_id"] = location["remote_id"]
        if status is not None:
            if status not in ("completed", "voided"):
                raise field_error(("status",), "status is completed or voided", "enum")
            params["status"] = status.upper()
        maps = {ref: await self._id_map(ref) for ref in REFERENCES["orders"]}
        ctx = self._ctx(maps)
        out: list[dict[str, Any]] = []
        async with self._session() as client:
            async for page in self._pager().pages(client, LIST_PATHS["orders"], params=params):
                batch = [self._vendor_record("orders", raw, ctx) for raw in page.records]
                async with self.db.transaction(self.context.tenant_id) as uow:
                    out.extend([(await self._upsert(uow, "orders", record)).record for record in batch])
        return out

    async def _refresh_levels(self, client: VendorClient, store_id: Any, product_ids: Iterable[Any]) -> None:
        """Re-read and cache the stock of these products at a store (after a sale moved it); best effort."""
        for pid in sorted({str(p) for p in product_ids if p}):
            try:
                row = await self._read_level(client, pid, str(store_id))
                if row is not None:
                    await self._cache("inventory", row)
            except VendorError as exc:  # the sale is recorded; the next poll refreshes the stock
                log.info("hqstore %s: could not re-read the stock of %s (%s)", self.context.id, pid, exc.code)

    # -- inventory -----------------------------------------------------------------------------------
    async def _read_level(self, client: VendorClient, product_id: str, store_id: str) -> dict[str, Any] | None:
        """``GET /api/v1/inventory?store_id=&product_id=``: the level row, or ``None`` when there is none."""
        body = await client.json("GET", f"{API}/inventory", params={"store_id": store_id, "product_id": product_id,
                                                                      "page": 1, "pageSize": 1})
        rows = unwrap(body, "GET /inventory")
        if not isinstance(rows, list):
            raise VendorError("HQ/Store GET /inventory: data is not a list", vendor=VENDOR, code="vendor_invalid_response")
        return next((r for r in rows if isinstance(r, dict) and str(r.get("productId")) == product_id
                     and str(r.get("storeId")) == store_id), None)

    async def create_adjustment(self, body: Any) -> dict[str, Any]:
        """Accept a stock delta (units, at most 3 decimals: HQ/Store keeps thousandths) for
        ``POST /api/v1/inventory/adjustments``; stored ``pending`` with its push job in one
        transaction (:func:`gateway.services.adjustments.store_pending`); the worker pushes it.

        Raises:
            ValidationFailed: unknown product or location, a variant, a zero delta, a product
                that does not track stock.
        """
        product = await self._adjustment_product(body)
        if not product.get("track_inventory", True):
            raise field_error(("body", "product_id"), "this product does not track stock at HQ/Store", "not_tracked")
        location = await self._live("locations", body.location_id)
        if location is None:
            raise field_error(("body", "location_id"), "no such location on this connection", "unknown_location")
        delta_milli = int(body.delta * _MILLI)
        if delta_milli == 0:
            raise field_error(("body", "delta"), "the delta must not be zero", "zero_delta")
        now = jsonutil.utcnow()
        from gateway.ids import new_id

        values = {"id": new_id("adjustment"), "tenant_id": self.context.tenant_id, "connection_id": self.context.id,
                  "product_id": product["id"], "variant_id": None, "location_id": location["id"],
                  "delta_milli": delta_milli, "reason": body.reason, "reference": body.reference,
                  "created_at": now, "updated_at": now}
        async with self.db.transaction(self.context.tenant_id) as uow:
            return await adjustments.store_pending(uow, values)

    async def push_adjustment(self, adjustment_id: str, *, final: bool = False) -> dict[str, Any]:
        """One push of a ``pending`` adjustment, applied once however often it is repeated
        (README "Stock adjustments": the doc offers no idempotency key).

        Under the stock row's lock: read the level (``GET /inventory?store_id=&product_id=``);
        settle any push of this row left in doubt from it (:meth:`_resolve_in_doubt`); record the
        intent (the quantity read and the target) and journal the delta
        (:func:`gateway.services.journal.expect`), committed before ``POST
        /api/v1/inventory/adjustments`` sends the delta in thousandths. Then:

        - answered 201 → ``applied``; the level is read back and cached (echo: no
          ``inventory.updated``), the adjustment's ``adjustment.applied`` is the event;
        - refused (4xx, e.g. HQ/Store's "Insufficient stock") → ``failed``;
        - unanswered (5xx, timeout) → the level is read at once: the target → ``applied``; the
          quantity before → no verdict (the next attempt sends it); anything else → ``failed``
          ``outcome_unknown``; unreadable → no verdict, the intent stays for the next attempt.

        The frame (the row, the live product and location, the lock) is
        :meth:`~gateway.sdk.remote.RemoteConnector._push_at_location`; the push is :meth:`_push_held`.

        Raises:
            NotFound: no such adjustment on this connection.
            PushDeferred: no verdict yet (the attempt and its error are recorded).
        """
        return await self._push_at_location(adjustment_id, final=final)

    async def _push_held(self, client: VendorClient, held: Any, adjustment_id: str, product: dict[str, Any],
                         location: dict[str, Any], *, final: bool) -> dict[str, Any]:
        """The push under the stock row's lock (see :meth:`push_adjustment`)."""
        pid, sid = product["remote_id"], location["remote_id"]
        try:
            current = await self._read_level(client, pid, sid)
        except VendorError as exc:
            return await self._not_applied(adjustment_id, exc, fatal=not exc.retryable, final=final)
        before = int(current["quantity"]) if current is not None else 0
        await self._resolve_in_doubt(product, location, current, attempt_of=adjustment_id)
        async with self.db.read() as conn:
            row = await adjustments.load(conn, self.context.id, adjustment_id)
        if row["status"] != "pending":  # its own earlier push, settled from the level just read
            return render_adjustment(row)
        delta = int(row["delta_milli"])
        target = before + delta
        if target < 0:
            async with self.db.transaction(self.context.tenant_id) as uow:
                if current is not None:
                    await self._cache_level(uow, product, location, current)
                return await adjustments.settle(uow, adjustment_id, "failed", last_error=(
                    f"insufficient_stock: product {product['id']} has {Decimal(before) / _MILLI} at location "
                    f"{location['id']}; a delta of {Decimal(delta) / _MILLI} would take it below zero"))
        notes = f"{row['reason']}: {row['reference']}" if row["reference"] else row["reason"]
        vendor_body = self._write_body("inventory", {
            "location_id": location["id"], "product_id": product["id"], "delta": Decimal(delta) / _MILLI,
            "reason": row["reason"], "notes": notes[:500]},
            {"locations": {location["id"]: sid}, "products": {product["id"]: pid}})
        async with self.db.transaction(self.context.tenant_id) as uow:  # the intent, durable before the call
            await held.verify(uow)
            await uow.conn.execute(update(t.adjustments).where(
                t.adjustments.c.id == adjustment_id, t.adjustments.c.status == "pending").values(
                intent_before_milli=before, intent_target_milli=target, updated_at=jsonutil.utcnow()))
            await journal.expect(uow, connection_id=self.context.id, remote_id=f"{pid}:{sid}", delta_milli=delta,
                                 adjustment_id=adjustment_id, ttl=journal.window(self.settings))
        try:
            answer = await self._send(client, "POST", f"{API}/inventory/adjustments", vendor_body)
        except VendorError as exc:
            return await self._unanswered(client, adjustment_id, product, location, before, target, exc, final=final)
        try:
            level = await self._read_level(client, pid, sid)
        except VendorError as exc:  # applied: the answer says the quantity after it
            log.info("hqstore %s: could not read back the stock of %s:%s (%s)", self.context.id, pid, sid, exc.code)
            level = None
            if isinstance(answer, dict) and isinstance(answer.get("quantityAfter"), int) and current is not None:
                level = {**current, "quantity": answer["quantityAfter"], "updatedAt": answer.get("createdAt")}
        return await self._applied(adjustment_id, product, location, level)

    async def _unanswered(self, client: VendorClient, adjustment_id: str, product: dict[str, Any],
                          location: dict[str, Any], before: int, target: int, exc: VendorError, *,
                          final: bool) -> dict[str, Any]:
        """The ``POST`` failed: refused (4xx: not applied), or unanswered (it may have landed): look now."""
        if not exc.retryable:
            await self._clear_intent(adjustment_id)
            return await self._not_applied(adjustment_id, exc, fatal=True, final=final)
        try:
            current = await self._read_level(client, product["remote_id"], location["remote_id"])
        except VendorError:
            return await self._not_applied(adjustment_id, exc, fatal=False, final=final)
        now = int(current["quantity"]) if current is not None else 0
        if now == target:  # it landed; only the answer was lost
            return await self._applied(adjustment_id, product, location, current)
        if now == before:  # it did not land: the next attempt sends it
            await self._clear_intent(adjustment_id)
            return await self._not_applied(adjustment_id, exc, fatal=False, final=final)
        async with self.db.transaction(self.context.tenant_id) as uow:
            if current is not None:
                await self._cache_level(uow, product, location, current)
            return await adjustments.settle(uow, adjustment_id, "failed",
                                            last_error=_outcome_unknown(before, target, now, exc))

    async def _resolve_in_doubt(self, product: dict[str, Any], location: dict[str, Any], current: dict[str, Any] | None,
                                *, attempt_of: str | None = None) -> None:
        """Settle each ``pending`` push of this stock row with a recorded intent from the level
        just read (thousandths): its target → ``applied``; its quantity before → not sent (intent
        cleared, the next attempt sends it); anything else → ``failed`` ``outcome_unknown``."""
        async with self.db.read() as conn:
            doubtful = (await conn.execute(select(t.adjustments).where(
                t.adjustments.c.connection_id == self.context.id, t.adjustments.c.product_id == product["id"],
                t.adjustments.c.location_id == location["id"], t.adjustments.c.status == "pending",
                t.adjustments.c.intent_target_milli.is_not(None)).order_by(t.adjustments.c.updated_at))).mappings().all()
        quantity = int(current["quantity"]) if current is not None else 0
        for row in doubtful:
            before, target = row["intent_before_milli"], row["intent_target_milli"]
            if quantity == before:
                await self._clear_intent(row["id"])
                continue
            async with self.db.transaction(self.context.tenant_id) as uow:
                if quantity == target:
                    await adjustments.settle(uow, row["id"], "applied", attempt=row["id"] == attempt_of)
                    inventory_links.landed(uow, dict(row), f"{product['remote_id']}:{location['remote_id']}")
                else:
                    await adjustments.settle(uow, row["id"], "failed", attempt=row["id"] == attempt_of,
                                             last_error=_outcome_unknown(before, target, quantity, None))
                if current is not None:
                    await self._cache_level(uow, product, location, current)
                if quantity == target:
                    await journal.close(uow, row["id"])

    async def _cache_level(self, uow: UnitOfWork, product: dict[str, Any], location: dict[str, Any],
                           row: dict[str, Any]) -> dict[str, Any]:
        maps = {"products": {product["remote_id"]: product["id"]}, "locations": {location["remote_id"]: location["id"]}}
        record = self._vendor_record("inventory", row, self._ctx(maps))
        return (await self._upsert(uow, "inventory", record)).record

    async def _applied(self, adjustment_id: str, product: dict[str, Any], location: dict[str, Any],
                       level: dict[str, Any] | None) -> dict[str, Any]:
        """Settle ``applied`` and cache the level read back (``None``: the poll brings it)."""
        async with self.db.transaction(self.context.tenant_id) as uow:
            settled = await adjustments.settle(uow, adjustment_id, "applied")
            if level is not None:
                row = await adjustments.load(uow.conn, self.context.id, adjustment_id)
                inventory_links.landed(uow, row, f"{product['remote_id']}:{location['remote_id']}")
                await self._cache_level(uow, product, location, level)
                await journal.close(uow, adjustment_id)
            return settled

    async def _not_applied(self, adjustment_id: str, error: Any, *, fatal: bool, final: bool) -> dict[str, Any]:
        """:func:`gateway.services.adjustments.not_applied`, saying ``outcome_unknown`` when given
        up while a delta of it may have landed."""
        if fatal or final:
            async with self.db.read() as conn:
                row = await adjustments.load(conn, self.context.id, adjustment_id)
            if row["intent_target_milli"] is not None:
                error = _outcome_unknown(row["intent_before_milli"], row["intent_target_milli"], None, error)
        return await adjustments.not_applied(self.db, self.context.tenant_id, adjustment_id, error, fatal=fatal,
                                             final=final)

    # -- transfers ---------------------------------------------------------------------------------
    async def transfer_movements(self, *, status: str | None = None) -> list[dict[str, Any]]:
        """Transfers between stores read as inventory movements (doc "Transfers": ``GET
        /api/v1/transfers``, then ``GET /api/v1/transfers/:id`` for the items).

        Returns one movement per transfer item, oldest transfer first::

            {"transfer_id", "number", "status" ("draft"|"sent"|"received"|"cancelled"),
             "product_id" (gateway id or None when not cached), "product_remote_id",
             "from_location_id", "to_location_id" (gateway ids or None),
             "quantity" (Decimal units sent), "received_quantity" (Decimal units received),
             "sent_at", "received_at" (aware UTC datetimes or None)}

        Raises:
            ValidationFailed: an unknown ``status`` filter.
            VendorError: the vendor failed.
        """
        statuses = {"draft": "DRAFT", "sent": "SENT", "received": "RECEIVED", "cancelled": "CANCELLED"}
        if status is not None and status not in statuses:
            raise field_error(("status",), f"status is one of {', '.join(statuses)}", "enum")
        params = {"status": statuses[status]} if status else {}
        out: list[dict[str, Any]] = []
        locations = await self._id_map("locations")
        async with self._session() as client:
            listed = [raw async for raw in self._pager().records(client, f"{API}/transfers", params=params)]
            for summary in listed:
                path = f"{API}/transfers/{summary.get('id')}"
                transfer = unwrap(await client.json("GET", path), f"GET {path}")
                items = [i for i in transfer.get("items") or [] if isinstance(i, dict)]
                products = await self._id_map("products", [str(i.get("productId")) for i in items])
                for item in items:
                    out.append({
                        "transfer_id": str(transfer.get("id")), "number": transfer.get("transferNumber"),
                        "status": str(transfer.get("status") or "").lower(),
                        "product_id": products.get(str(item.get("productId"))),
                        "product_remote_id": str(item.get("productId")),
                        "from_location_id": locations.get(str(transfer.get("fromStoreId"))),
                        "to_location_id": locations.get(str(transfer.get("toStoreId"))),
                        "quantity": Decimal(int(item.get("quantity") or 0)) / _MILLI,
                        "received_quantity": Decimal(int(item.get("receivedQuantity") or 0)) / _MILLI,
                        "sent_at": vendor_time(transfer.get("sentAt")),
                        "received_at": vendor_time(transfer.get("receivedAt")),
                    })
        return out


def _describe(error: Any) -> str:
    if isinstance(error, TillgateError):
        return f"{error.code}: {error.detail}"
    return str(error)


def _outcome_unknown(before: int, target: int, now: int | None, error: Any) -> str:
    """``last_error`` of an adjustment whose delta from ``before`` to ``target`` (thousandths) may
    or may not have landed at HQ/Store (``now``: the level read since, if one could be read)."""
    cause = f" ({_describe(error)})" if error is not None else ""
    seen = "the POS could not be read to tell" if now is None else \
        f"on hand is now {Decimal(now) / _MILLI}, neither, so the stock also moved at the POS"
    return (f"outcome_unknown: the adjustment of on hand from {Decimal(before) / _MILLI} to {Decimal(target) / _MILLI} "
            f"may or may not have landed and {seen}{cause}; count the stock and correct it with a new adjustment")
