"""The AI POS connector: cursor-paginated incremental reads, documented writes, signed webhooks.

Transport is a :class:`~gateway.sdk.http.VendorClient` (``Authorization: Bearer aipos_...``,
retries, rate limit, circuit breaker); shape is ``mappings/aipos/*.yaml``. The API's shape
(paths, objects, pagination, errors, webhooks, signatures) is fixed by ``API.md`` next to this
file, which fills in what the vendor doc (``vendor-docs/aipos-api.txt``) leaves out; ``README.md``
lists every choice this connector makes on top of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, ClassVar

import httpx

from gateway import jsonutil
from gateway.errors import (
    Conflict,
    NotFound,
    TillgateError,
    VendorError,
    WebhookMalformed,
    WebhookSignatureInvalid,
    field_error,
)
from gateway.mapping import (
    MappingContext,
    MappingError,
    MappingSpec,
    TransformError,
    currency_exponent,
    dumps_vendor_body,
    load_connector_mappings,
)
from gateway.mapping.transforms import to_decimal
from gateway.sdk.auth import BearerToken
from gateway.sdk.connector import InboundEvent, Page, RemoteRecord, load_manifest, page_fingerprint
from gateway.sdk.http import VendorClient, VendorNotFound, VendorRequestRejected
from gateway.sdk.pagination import BasePaginator
from gateway.sdk.remote import RemoteConnector, since_param, vendor_time
from gateway.services import adjustments, inventory_links, journal, records
from gateway.services.adjustments import render_adjustment
from gateway.services.locks import LockBusy

log = logging.getLogger(__name__)

VENDOR = "aipos"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
#: remote id of the one store location an AI POS account has (synthesized: the API has none)
STORE_ID = "store"
#: list endpoint of each entity read through the API (API.md "Endpoints")
LIST_PATHS = {"products": "/products", "customers": "/customers", "inventory": "/inventory", "orders": "/sales"}
#: what ``starting_after`` names per list: the last record's id (inventory levels have none: their product id)
CURSOR_KEYS = {"inventory": "product_id"}
#: entities whose records refer to others, and which (the id maps they resolve against)
REFERENCES = {"orders": ("customers", "products", "locations"), "inventory": ("products", "locations")}
#: bumped whenever code (not YAML) changes what a page maps to (the sale line taxes): part of
#: every page fingerprint, so a changed connector re-maps pages a scan stored before
MAPPING_CODE_VERSION = 1
SIGNATURE_HEADER = "aipos-signature"
EVENT_ID_HEADER = "aipos-event-id"
#: the six event types of the vendor doc ("Webhooks")
EVENT_TYPES = ("sale.created", "sale.refunded", "product.created", "product.updated", "inventory.low",
               "sync.completed")

_MAPPINGS = load_connector_mappings("aipos")
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_HUNDRED = Decimal(100)


# -- small helpers -----------------------------------------------------------------------------------


def _whole(value: Decimal, loc: tuple[str, ...]) -> int:
    if value != value.to_integral_value():
        raise field_error(loc, "AI POS quantities are whole numbers", "not_integer")
    return int(value)






def _vendor_error(response: httpx.Response) -> tuple[str | None, str | None]:
    """``(code, param)`` of an API.md error body ``{"error": {"type", "code", "message", "param"}}``."""
    try:
        doc = jsonutil.loads(response.content)
    except jsonutil.MalformedJSON:
        return None, None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return None, None
    code, param = error.get("code"), error.get("param")
    return (code if isinstance(code, str) else None), (param if isinstance(param, str) else None)


def _vendor_code(exc: BaseException) -> str | None:
    return exc.extra.get("vendor_code") if isinstance(exc, TillgateError) else None


def with_line_taxes(sale: dict[str, Any], currency: str) -> dict[str, Any]:
    """A copy of a sale whose items carry the tax AI POS does not give per item.

    Per API.md ("Totals, exactly"): item ``total = qty * price``; the sale's ``tax`` is the sum
    over items of ``total * tax_rate / 100`` rounded once, half up, to 2 places. Each item gets
    ``_tillgate_tax`` (its exact tax rounded half up to the currency's places; the rounding
    residue against the sale's ``tax`` is put on the last taxed item, so the items' taxes add
    up to ``tax`` exactly) and ``_tillgate_total`` (``total + _tillgate_tax``, what the customer
    pays for the line). Money in the major unit, as ``Decimal``.

    Raises:
        TransformError: an item's ``qty``, ``price``, ``total`` or ``tax_rate``, or the sale's
            ``tax``, is not a number.
    """
    items = sale.get("items")
    if not isinstance(items, list):
        return sale
    step = Decimal(1).scaleb(-currency_exponent(currency))
    totals: list[Decimal] = []
    taxes: list[Decimal] = []
    last_taxed = None
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise TransformError(f"items[{index}] is not an object")
        total = item.get("total")
        line = to_decimal(total) if total is not None else to_decimal(item.get("qty")) * to_decimal(item.get("price"))
        rate = to_decimal(item.get("tax_rate") if item.get("tax_rate") is not None else 0)
        totals.append(line)
        taxes.append((line * rate / _HUNDRED).quantize(step, rounding=ROUND_HALF_UP))
        if rate:
            last_taxed = index
    if sale.get("tax") is not None and last_taxed is not None:
        taxes[last_taxed] += to_decimal(sale["tax"]) - sum(taxes, Decimal(0))
    out = [{**item, "_tillgate_tax": tax, "_tillgate_total": line + tax}
           for item, line, tax in zip(items, totals, taxes, strict=True)]
    return {**sale, "items": out}


class AIPOSClient(VendorClient):
    """:class:`VendorClient` that also keeps the vendor's error ``code`` and ``param``.

    API.md errors carry ``{"error": {"code": "insufficient_stock", "param": ...}}``; the kit's
    :meth:`VendorClient.classify` keeps only the status and message. This adds ``vendor_code``
    and ``vendor_param`` to the error's ``extra`` (also shown in the problem document), which the
    connector reads to tell ``409 insufficient_stock`` from ``409 sale_already_refunded``.
    """

    def classify(self, outcome: httpx.Response | BaseException) -> VendorError | None:
        """The kit's classification, plus ``vendor_code``/``vendor_param`` read from an error body."""
        error = super().classify(outcome)
        if error is not None and isinstance(outcome, httpx.Response) and "vendor_code" not in error.extra:
            code, param = _vendor_error(outcome)
            error.extra["vendor_code"] = code
            error.extra["vendor_param"] = param
        return error


class StartingAfterPaginator(BasePaginator):
    """API.md lists: ``?limit=N&starting_after=<last id>`` answering ``{"object": "list", "data",
    "has_more"}``; the next page starts after the last record's ``cursor_key``.

    Position: ``{"after": <id> | None}``. The kit's guards apply (a repeated position or page is
    a :class:`~gateway.sdk.pagination.PaginationLoop`).
    """

    def __init__(self, *, page_size: int, cursor_key: str = "id", **kwargs: Any) -> None:
        super().__init__(records_path="data", id_key=cursor_key, **kwargs)
        self.page_size = page_size
        self.cursor_key = cursor_key

    def first_position(self) -> dict[str, Any]:
        return {"after": None}

    def params_for(self, position: dict[str, Any]) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": self.page_size}
        if position.get("after"):
            params["starting_after"] = position["after"]
        return params

    def next_position(self, position: dict[str, Any], records: list[Any], body: Any,
                      response: httpx.Response) -> dict[str, Any] | None:
        if not records or not isinstance(body, dict) or body.get("has_more") is not True:
            return None
        last = records[-1].get(self.cursor_key) if isinstance(records[-1], dict) else None
        if not isinstance(last, str) or not last:
            raise VendorError(f"AI POS list: the last record has no {self.cursor_key} to continue after",
                              vendor=VENDOR, code="vendor_invalid_response")
        return {"after": last}


def _header_values(headers: Any, name: str) -> list[str]:
    """Every value of header ``name`` (case-insensitive) in any mapping of headers.

    Raises:
        WebhookMalformed: the headers cannot be read, or a value is not text.
    """
    try:
        items = list(headers.items())
    except Exception as exc:  # any object the caller hands in: never more than a 400
        raise WebhookMalformed("the delivery's headers cannot be read") from exc
    values = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise WebhookMalformed("the delivery's headers cannot be read")
        key, value = item
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if not isinstance(key, str) or key.lower() != name:
            continue
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not isinstance(value, str):
            raise WebhookMalformed(f"the {name} header is not text")
        values.append(value)
    return values


def _parse_signature(values: list[str]) -> tuple[str, list[str]]:
    """``(t as sent, [v1 signatures])`` from ``AIPOS-Signature: t=<unix seconds>,v1=<hex>[,v1=...]``
    (several headers are read as one list). Other schemes (``v0=``) are ignored.

    Raises:
        WebhookMalformed: a part without ``=``, no or several ``t``, a ``t`` that is not 1-15 digits.
    """
    timestamp: str | None = None
    signatures: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, val = part.partition("=")
            if not sep:
                raise WebhookMalformed("AIPOS-Signature is not t=...,v1=...")
            key, val = key.strip(), val.strip()
            if key == "t":
                if timestamp is not None:
                    raise WebhookMalformed("AIPOS-Signature has more than one t=")
                timestamp = val
            elif key == "v1":
                signatures.append(val)
    if timestamp is None or not _TIMESTAMP.fullmatch(timestamp):
        raise WebhookMalformed("AIPOS-Signature has no t=<unix seconds>")
    return timestamp, signatures


def _printable_ascii(value: str, limit: int) -> bool:
    return 0 < len(value) <= limit and value.isascii() and value.isprintable()


class AIPOSConnector(RemoteConnector):
    """AI POS (``vendor-docs/aipos-api.txt``, as fixed by ``connectors/aipos/API.md``).

    Reads: ``fetch`` walks the list endpoints with ``starting_after`` cursors and, for the
    incremental entities, ``updated_since``; the one store location is synthesized. Writes:
    products (create, update), customers (create), sales (create, whole refund), stock deltas
    (``POST /inventory/adjustments`` with an ``Idempotency-Key``), PDF receipts. Webhooks:
    :meth:`verify_webhook` (HMAC-SHA256 ``AIPOS-Signature``) and :meth:`apply_webhook`.

    The client, settings and id maps come from :class:`~gateway.sdk.remote.RemoteConnector`.
    """

    manifest: ClassVar[dict[str, Any]] = load_manifest("connectors.aipos")
    mappings: ClassVar[dict[str, MappingSpec]] = _MAPPINGS
    vendor_title: ClassVar[str] = "AI POS"
    vendor_id: ClassVar[str] = VENDOR
    client_class: ClassVar[type[VendorClient]] = AIPOSClient
    health_fields: ClassVar[tuple[str, ...]] = ("store",)

    # -- transport ---------------------------------------------------------------------------------
    def auth(self) -> BearerToken:
        """``Authorization: Bearer <api key>`` (the doc's "Authentication")."""
        return BearerToken(str(self.context.credentials.get("api_key") or "aipos_missing"))

    @property
    def currency(self) -> str:
        """The connection's ISO 4217 currency (AI POS sends bare numbers in the major unit)."""
        return str(self.settings.get("currency") or "INR").upper()

    @property
    def webhook_tolerance(self) -> int:
        """Seconds a signed ``t`` may be away from the receiver's clock (manifest, 300)."""
        return int((self.manifest.get("webhooks") or {}).get("tolerance_seconds") or 300)

    # -- life cycle --------------------------------------------------------------------------------
    async def check(self) -> None:
        """``GET /products?limit=1`` with the key (``/health`` needs none, so it proves nothing).

        Raises:
            VendorCredentialsRejected: 424, the key was refused (401).
            VendorError: the vendor failed or answered something that is not a list.
        """
        async with self._session() as client:
            body = await client.json("GET", "/products", params={"limit": 1})
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise VendorError("AI POS GET /products did not answer a list", vendor=VENDOR,
                              code="vendor_invalid_response")

    # -- id maps -------------------------------------------------------------------------------------
    async def _maps_for(self, entity: str, raw: dict[str, Any]) -> dict[str, dict[str, str]]:
        """The id maps one vendor record of ``entity`` resolves against (only its own references)."""
        maps: dict[str, dict[str, str]] = {}
        if entity == "orders":
            items = raw.get("items") if isinstance(raw.get("items"), list) else []
            maps["products"] = await self._id_map("products", [i.get("product_id") for i in items if isinstance(i, dict)])
            maps["customers"] = await self._id_map("customers", [raw.get("customer_id")])
            maps["locations"] = {STORE_ID: await self._store_location_id()}
        elif entity == "inventory":
            maps["products"] = await self._id_map("products", [raw.get("product_id")])
            maps["locations"] = {STORE_ID: await self._store_location_id()}
        return maps

    def _record(self, entity: str, raw: dict[str, Any], ctx: MappingContext) -> RemoteRecord:
        """Map one vendor object; ``remote_updated_at``/``created_at`` are its ``updated_at``/``created_at``.

        Raises:
            MappingError: the object does not fit the entity's mapping (names the field and value).
        """
        source = raw
        if entity == "orders":
            try:
                source = with_line_taxes(raw, self.currency)
            except TransformError as exc:
                raise MappingError(str(exc), file=_MAPPINGS["orders"].file, field="lines", value=raw.get("items")) from exc
        remote_id, body = _MAPPINGS[entity].read(source, ctx)
        if entity == "inventory":
            available = body["on_hand"] - self.safety_stock
            body["available"] = available if available > 0 else Decimal(0)
        return RemoteRecord(remote_id=remote_id, body=body, raw=raw, remote_updated_at=vendor_time(raw.get("updated_at")),
                            created_at=vendor_time(raw.get("created_at")))

    # -- reads -------------------------------------------------------------------------------------
    async def fetch(self, entity: str, *, since: datetime | None = None,
                    checkpoint: dict[str, Any] | None = None) -> AsyncIterator[Page]:
        """Read ``entity`` page by page (API.md "Lists and pagination").

        ``locations``: one page holding the synthesized store. The others: ``GET <list>`` with
        ``limit`` = ``page_size`` and ``starting_after``, plus ``updated_since=since`` (floored to
        the second) when ``since`` is given. A page's checkpoint is ``{"after": <last id>,
        "since": <the filter used>}``: a resumed read continues the same filtered list, and when
        the vendor no longer knows the id (``400 parameter_invalid`` on ``starting_after``) it
        starts that list again from the top (re-reading is harmless: upserts are idempotent).

        Raises:
            OperationNotSupported: an entity AI POS does not have (categories).
            VendorError: the vendor failed (``PaginationLoop`` for a list that does not advance).
            MappingError: a record does not fit its mapping (when the page's records are read).
        """
        if entity != "locations" and entity not in LIST_PATHS:
            raise self._unsupported(f"reading {entity} from the vendor")
        async with self._session() as client:
            if entity == "locations":
                ctx = self._ctx()
                yield Page([self._record("locations", await self._store_raw(client), ctx)], None)
                return
            maps = {ref: await self._id_map(ref) for ref in REFERENCES.get(entity, ()) if ref != "locations"}
            if "locations" in REFERENCES.get(entity, ()):  # made up, so cached on demand
                maps["locations"] = {STORE_ID: await self._store_location_id()}
            since_text = since_param(since) if since is not None else None
            start = None
            if checkpoint and checkpoint.get("after"):  # resume the same filtered list
                start = {"after": str(checkpoint["after"])}
                since_text = checkpoint.get("since") if isinstance(checkpoint.get("since"), str) else None
            async for page in self._paged(client, entity, maps, since_text, start):
                yield page

    async def _paged(self, client: VendorClient, entity: str, maps: dict[str, dict[str, str]],
                     since_text: str | None, start: dict[str, Any] | None) -> AsyncIterator[Page]:
        """Pages of one list endpoint from ``start``, mapped lazily, each fingerprinted by its
        response bytes, the entity's mapping file, the settings and the reference ``maps`` it
        resolves against; checkpoints carry ``since_text`` (the ``updated_since`` filter)."""
        params = {"updated_since": since_text} if since_text else {}
        ctx = self._ctx(maps)
        base = self.fingerprint_base(entity, _MAPPINGS[entity].digest, MAPPING_CODE_VERSION, maps)
        pager = StartingAfterPaginator(page_size=self.page_size, cursor_key=CURSOR_KEYS.get(entity, "id"))
        path = LIST_PATHS[entity]
        yielded = False
        try:
            async for page in pager.pages(client, path, params=params, start=start):
                yielded = True
                after = page.next_position
                yield Page(load=lambda page=page: self._load(entity, page.records, ctx),
                           checkpoint=None if after is None else {**after, "since": since_text},
                           fingerprint=page_fingerprint(base, page.digest))
        except VendorRequestRejected as exc:
            if yielded or start is None or exc.extra.get("vendor_param") != "starting_after":
                raise
            log.info("aipos %s: %s no longer knows %s; reading the list again from the top",
                     self.context.id, path, start["after"])
            async for page in self._paged(client, entity, maps, since_text, None):
                yield page

    def _load(self, entity: str, raws: list[Any], ctx: MappingContext) -> list[RemoteRecord]:
        if entity != "inventory":
            return [self._record(entity, raw, ctx) for raw in raws]
        out = []
        for raw in raws:
            try:
                out.append(self._record("inventory", raw, ctx))
            except MappingError as exc:  # a product not (yet) in the cache: the next poll has it
                log.info("aipos %s: skipping the stock of %s (%s)", self.context.id,
                         raw.get("product_id") if isinstance(raw, dict) else raw, exc)
        return out

    async def _store_raw(self, client: VendorClient) -> dict[str, Any]:
        """The synthesized store: ``{"id": "store", "name": <store_name setting or /health's store>}``."""
        name = self.settings.get("store_name")
        if not name:
            body = await client.json("GET", "/health")
            name = body.get("store") if isinstance(body, dict) else None
        return {"id": STORE_ID, "name": str(name or "AI POS store")}

    async def _store_location_id(self) -> str:
        """The gateway id of the store location, caching the location first when it is not yet."""
        found = (await self._id_map("locations", [STORE_ID])).get(STORE_ID)
        if found is not None:
            return found
        async with self._session() as client:
            raw = await self._store_raw(client)
        record = self._record("locations", raw, self._ctx())
        async with self.db.transaction(self.context.tenant_id) as uow:
            return (await self._upsert(uow, "locations", record)).record["id"]

    # -- cache helpers -----------------------------------------------------------------------------
    @staticmethod
    def _level_of_product(product: dict[str, Any]) -> dict[str, Any]:
        """The inventory level a product object implies (API.md: ``stock`` is the on-hand quantity)."""
        return {"object": "inventory_level", "product_id": product.get("id"), "quantity": product.get("stock"),
                "low_stock_threshold": product.get("low_stock_threshold"), "updated_at": product.get("updated_at")}

    async def _cache_product(self, product: Any, level: dict[str, Any] | None = None) -> dict[str, Any]:
        """Upsert a product and its stock level (``level``, else the product's own ``stock``) in one
        transaction, each with its vendor ``updated_at`` as the version guard; return the product."""
        record = self._vendor_record("products", product, self._ctx())
        store = await self._store_location_id()
        async with self.db.transaction(self.context.tenant_id) as uow:
            result = await self._upsert(uow, "products", record)
            raw_level = level if level is not None else self._level_of_product(product)
            if raw_level.get("quantity") is not None:
                maps = {"products": {record.remote_id: result.record["id"]}, "locations": {STORE_ID: store}}
                await self._upsert(uow, "inventory", self._vendor_record("inventory", raw_level, self._ctx(maps)))
            return result.record

    async def _cache_levels(self, client: VendorClient, product_remote_ids: Iterable[str]) -> None:
        """Read and cache the current stock of these products (after a sale or refund moved it)."""
        for rid in sorted(set(product_remote_ids)):
            try:
                level = await self._level(client, rid)
            except VendorError as exc:  # the write succeeded; the next poll refreshes the stock
                log.info("aipos %s: could not re-read the stock of %s (%s)", self.context.id, rid, exc.code)
                continue
            if level is not None:
                with contextlib.suppress(VendorError):
                    await self._cache("inventory", level)

    async def _level(self, client: VendorClient, product_remote_id: str) -> dict[str, Any] | None:
        """``GET /inventory?product_id=``: the product's inventory level, or ``None``."""
        body = await client.json("GET", "/inventory", params={"product_id": product_remote_id, "limit": 1})
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise VendorError("AI POS GET /inventory did not answer a list", vendor=VENDOR, code="vendor_invalid_response")
        return next((row for row in data if isinstance(row, dict) and row.get("product_id") == product_remote_id), None)

    async def _level_after(self, answer: Any, product: dict[str, Any]) -> dict[str, Any] | None:
        """The inventory level right after an adjustment, from its answer (API.md: ``quantity``
        after, ``created_at``, the level's ``updated_at`` for that change) and the cached level's
        other fields; ``None`` when either is missing. Used when the read-back after the write
        fails: the level it caches is the state the write landed in, with the write's own version,
        so a report read before the write (a held webhook, a slow poll) is older and cannot
        overwrite it."""
        if not isinstance(answer, dict) or not isinstance(answer.get("quantity"), int) \
                or not isinstance(answer.get("created_at"), str) or answer.get("product_id") != product["remote_id"]:
            return None
        async with self.db.read() as conn:
            cached = await records.load_by_remote_id(conn, connection_id=self.context.id, entity="inventory",
                                                     remote_id=product["remote_id"])
        threshold = None if cached is None else cached.get("low_stock_threshold")
        if threshold is None:
            return None
        return {"object": "inventory_level", "product_id": product["remote_id"], "quantity": answer["quantity"],
                "low_stock_threshold": int(Decimal(str(threshold))), "updated_at": answer["created_at"]}

    # -- write helpers -----------------------------------------------------------------------------

    async def _post(self, client: VendorClient, path: str, body: dict[str, Any], key: str) -> Any:
        """``POST`` JSON with ``Idempotency-Key: key`` (API.md "Transport": the vendor replays the
        first answer to the same key and body), so the client may retry it after any failure."""
        headers = {**JSON_HEADERS, "Idempotency-Key": key}
        return await client.json("POST", path, content=dumps_vendor_body(body), headers=headers, idempotent=True)

    def _check_currency(self, currency: str | None) -> None:
        if currency and currency.upper() != self.currency:
            raise field_error(("body", "currency"), f"this AI POS account works in {self.currency}",
                           "unsupported_by_vendor")

    def _check_catalog_fields(self, body: Any) -> None:
        """Refuse what AI POS cannot hold and would change the product's meaning."""
        if body.variants:
            raise field_error(("body", "variants"), "AI POS products have no variants", "unsupported_by_vendor")
        if body.category_ids:
            raise field_error(("body", "category_ids"), "AI POS categories are free text; this connection has no "
                           "category records", "unsupported_by_vendor")
        taxes = body.taxes or []
        if len(taxes) > 1 or any(tax.compound for tax in taxes):
            raise field_error(("body", "taxes"), "AI POS products carry one simple tax rate", "unsupported_by_vendor")
        given = "tax_inclusive" in body.model_fields_set and body.tax_inclusive is not None
        if given and body.tax_inclusive != bool(self.settings.get("tax_inclusive")):
            raise field_error(("body", "tax_inclusive"), "AI POS prices are "
                           + ("tax-inclusive" if self.settings.get("tax_inclusive") else "tax-exclusive")
                           + " on this connection", "unsupported_by_vendor")

    # -- catalog and customers ---------------------------------------------------------------------
    async def create_product(self, body: Any) -> dict[str, Any]:
        """``POST /products`` (API.md); the product answered is cached with its stock level.

        Fields AI POS has no place for (description, cost, translations) are not sent.

        Raises:
            ValidationFailed: variants, category ids, several or compound taxes, a currency or
                tax-inclusiveness other than the connection's, more than 2 decimals in price.
        """
        self._check_catalog_fields(body)
        self._check_currency(body.currency)
        vendor_body = self._write_body("products", body.model_dump(), {})
        async with self._session() as client:
            raw = await self._post(client, "/products", vendor_body, f"tillgate-product-{uuid.uuid4().hex}")
        return await self._cache_product(raw)

    async def update_product(self, product_id: str, body: Any) -> dict[str, Any]:
        """``POST /products/{id}`` (API.md, Stripe-style update) with only the fields given; the
        product answered is cached with its stock level. Nothing given: the product is re-read.

        Raises:
            NotFound: no live product ``product_id`` on this connection.
            ValidationFailed: as :meth:`create_product`.
        """
        current = await self._live("products", product_id)
        if current is None:
            raise NotFound(f"no product {product_id!r} on this connection")
        self._check_catalog_fields(body)
        vendor_body = self._write_body("products", body.model_dump(exclude_unset=True), {})
        path = f"/products/{current['remote_id']}"
        async with self._session() as client:
            if vendor_body:
                raw = await self._post(client, path, vendor_body, f"tillgate-product-{uuid.uuid4().hex}")
            else:
                raw = await client.json("GET", path)
        return await self._cache_product(raw)

    async def create_customer(self, body: Any) -> dict[str, Any]:
        """``POST /customers`` (name, email, phone); the customer answered is cached.

        Raises:
            ValidationFailed: an address, credit limit or other currency (AI POS keeps none).
        """
        if body.address is not None:
            raise field_error(("body", "address"), "AI POS customers have no address", "unsupported_by_vendor")
        if body.credit_limit is not None:
            raise field_error(("body", "credit_limit"), "AI POS customers have no credit account", "unsupported_by_vendor")
        self._check_currency(body.currency)
        vendor_body = self._write_body("customers", body.model_dump(), {})
        async with self._session() as client:
            raw = await self._post(client, "/customers", vendor_body, f"tillgate-customer-{uuid.uuid4().hex}")
        return await self._cache("customers", raw)

    # -- sales -------------------------------------------------------------------------------------
    async def create_order(self, body: Any) -> dict[str, Any]:
        """``POST /sales`` (vendor doc "Example: Create a Sale"), then ``GET /sales/{id}`` cached
        (``order.created``) and the sold products' stock re-read and cached.

        Lines name a product by ``product_id`` or ``sku``; whole quantities; a line without
        ``unit_price`` is sent without ``price`` (AI POS sells at its catalog price). One payment
        method (the tenders' amounts are not sent: AI POS records a sale as paid in full by it).

        Raises:
            ValidationFailed: variants, discounts, fractional quantities, unknown products or
                customer, a location other than the store, no or several payment methods, a
                method AI POS lacks, ``placed_at``, another currency.
            Conflict: ``insufficient_stock`` (the vendor's 409; nothing was sold).
        """
        if body.placed_at is not None:
            raise field_error(("body", "placed_at"), "AI POS dates a sale when it is made", "unsupported_by_vendor")
        self._check_currency(body.currency)
        if body.location_id is not None and body.location_id != await self._store_location_id():
            raise field_error(("body", "location_id"), "not the store location of this connection", "unknown_location")
        methods = {payment.method for payment in body.payments}
        if len(methods) != 1:
            raise field_error(("body", "payments"), "AI POS records exactly one payment method per sale",
                           "unsupported_by_vendor", code="single_payment_method_required")
        data = body.model_dump()
        for n, line in enumerate(body.lines):
            loc = ("body", "lines", str(n))
            if line.variant_id:
                raise field_error((*loc, "variant_id"), "AI POS products have no variants", "unsupported_by_vendor")
            if line.discount:
                raise field_error((*loc, "discount"), "AI POS sales take no discounts", "unsupported_by_vendor")
            _whole(line.quantity, (*loc, "quantity"))
            product = await self._live("products", line.product_id) if line.product_id else None
            if product is None and line.sku and not line.product_id:
                async with self.db.read() as conn:
                    product = await records.find_product_by_sku(conn, connection_id=self.context.id, sku=line.sku)
            if product is None:
                raise field_error((*loc, "product_id"), "no such product on this connection", "unknown_product")
            data["lines"][n]["product_id"] = product["id"]
        remote = {
            "products": await self._remote_map("products", [line["product_id"] for line in data["lines"]]),
            "customers": await self._remote_map("customers", [body.customer_id]),
        }
        vendor_body = self._write_body("orders", data, remote)
        async with self._session() as client:
            try:
                answer = await self._post(client, "/sales", vendor_body, f"tillgate-sale-{uuid.uuid4().hex}")
            except VendorRequestRejected as exc:
                if _vendor_code(exc) == "insufficient_stock":
                    raise Conflict(f"not enough stock at AI POS for this sale ({exc.detail})",
                                   code="insufficient_stock") from exc
                raise
            sale_id = answer.get("id") if isinstance(answer, dict) else None
            if not isinstance(sale_id, str) or not sale_id:
                raise VendorError("AI POS POST /sales answered no sale id", vendor=VENDOR, code="vendor_invalid_response")
            raw = await client.json("GET", f"/sales/{sale_id}")
            order = await self._cache("orders", raw)
            await self._cache_levels(client, [item["product_id"] for item in vendor_body["items"]])
        return order

    async def refund_order(self, order_id: str, body: Any = None) -> dict[str, Any]:
        """Refund a whole sale: ``POST /sales/{id}/refund`` (API.md) with ``Idempotency-Key:
        tillgate-refund-<order id>`` (a refund happens once: a retried request is replayed). The
        sale answered is cached (``order.refunded``) and the restocked products re-read.

        ``body`` (a ``RefundCreate``, optional): ``lines`` must name every line in full (AI POS
        refunds whole sales only); ``restock`` must stay true (AI POS always puts stock back);
        ``reason`` is not sent (AI POS keeps none).

        Raises:
            NotFound: no such order. Conflict: ``order_not_refundable`` (already refunded, at the
            gateway or at the POS). ValidationFailed: ``partial_refund_unsupported``,
            ``restock_required``, ``refunded_at``.
        """
        order = await self._live("orders", order_id)
        if order is None:
            raise NotFound(f"no order {order_id!r} on this connection")
        if body is not None:
            self._check_whole_refund(order, body)
        if order["status"] != "completed":
            raise Conflict(f"order {order_id} is {order['status']}", code="order_not_refundable")
        path = f"/sales/{order['remote_id']}"
        async with self._session() as client:
            try:
                raw = await self._post(client, f"{path}/refund", {}, f"tillgate-refund-{order_id}")
            except VendorRequestRejected as exc:
                if _vendor_code(exc) != "sale_already_refunded":
                    raise
                await self._cache("orders", await client.json("GET", path))  # the POS refunded it already
                raise Conflict(f"order {order_id} was already refunded at the POS", code="order_not_refundable") from exc
            if not isinstance(raw, dict) or raw.get("object") != "sale":
                raw = await client.json("GET", path)
            refunded = await self._cache("orders", raw, event_type="order.refunded")
            items = raw.get("items") if isinstance(raw.get("items"), list) else []
            await self._cache_levels(client, [i["product_id"] for i in items
                                              if isinstance(i, dict) and isinstance(i.get("product_id"), str)])
        return refunded

    @staticmethod
    def _check_whole_refund(order: dict[str, Any], body: Any) -> None:
        if body.refunded_at is not None:
            raise field_error(("body", "refunded_at"), "AI POS dates a refund when it is made", "unsupported_by_vendor")
        if not body.restock:
            raise field_error(("body", "restock"), "AI POS always puts refunded goods back in stock",
                           "unsupported_by_vendor", code="restock_required")
        if body.lines is None:
            return
        quantities = {line["id"]: Decimal(line["quantity"]) for line in order["lines"]}
        asked: dict[str, Decimal] = {}
        for n, line in enumerate(body.lines):
            if line.line_id not in quantities:
                raise field_error(("body", "lines", str(n), "line_id"), "not a line of this order", "unknown_line")
            asked[line.line_id] = asked.get(line.line_id, Decimal(0)) + line.quantity
        if asked != quantities:
            raise field_error(("body", "lines"), "AI POS refunds whole sales only: leave out lines, or list every "
                           "line with its full quantity", "unsupported_by_vendor", code="partial_refund_unsupported")

    async def receipt_pdf(self, order_id: str) -> bytes:
        """The sale's PDF receipt: ``GET /sales/{id}/receipt`` (vendor doc "Sales & Bills":
        "Download PDF"; API.md: one page with store name, sale id, date, items, totals, payment
        method), served by ``GET /v1/connections/{id}/orders/{order_id}/receipt``
        (:func:`gateway.services.records.order_receipt`). Overrides :meth:`Connector.receipt_pdf`.

        The vendor's own ``Content-Disposition`` (``receipt_<sale id>.pdf``) is not passed on: the
        gateway names the file after its own order id.

        Args:
            order_id: the gateway's order id (``ord_...``) on this connection; the sale's id at
                AI POS is its ``remote_id``.

        Returns:
            The PDF document's bytes (starting ``%PDF-``), as AI POS rendered them.

        Raises:
            NotFound: no live order ``order_id`` on this connection.
            VendorError: the vendor failed (502 ``vendor_error``, 503 ``vendor_unavailable``, 504
                ``vendor_timeout``, 424 ``vendor_credentials_rejected``), answered something that
                is not a PDF (502 ``vendor_invalid_response``), or no longer has the sale (502
                ``vendor_not_found``).
        """
        order = await self._live("orders", order_id)
        if order is None:
            raise NotFound(f"no order {order_id!r} on this connection")
        async with self._session() as client:
            response = await client.request("GET", f"/sales/{order['remote_id']}/receipt",
                                            headers={"Accept": "application/pdf"})
        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/pdf" or not response.content.startswith(b"%PDF-"):
            raise VendorError("AI POS answered the receipt with something that is not a PDF", vendor=VENDOR,
                              vendor_status=response.status_code, code="vendor_invalid_response")
        return response.content

    # -- inventory -----------------------------------------------------------------------------------
    async def create_adjustment(self, body: Any) -> dict[str, Any]:
        """Accept a stock delta for ``POST /inventory/adjustments`` (API.md); the worker pushes it
        (:meth:`push_adjustment`).

        Validated first (nothing is stored for a bad request), then stored ``pending`` with its
        ``adjustment`` job in one transaction (:func:`gateway.services.adjustments.store_pending`).

        Returns:
            The Adjustment (``gateway.services.adjustments.render_adjustment``), ``pending``.

        Raises:
            ValidationFailed: unknown product or location, a variant, a fractional delta.
        """
        product = await self._adjustment_product(body)
        location = await self._live("locations", body.location_id)
        if location is None or location["remote_id"] != STORE_ID:
            raise field_error(("body", "location_id"), "no such location on this connection", "unknown_location")
        delta = _whole(body.delta, ("body", "delta"))
        return await adjustments.store_delta(self.db, self.context, product_id=product["id"], location_id=location["id"],
                                             delta=delta, reason=body.reason, reference=body.reference)

    async def push_adjustment(self, adjustment_id: str, *, final: bool = False) -> dict[str, Any]:
        """One push of a ``pending`` adjustment: ``POST /inventory/adjustments`` with
        ``Idempotency-Key: tillgate-<adjustment id>`` and a body built only from the row (the same
        bytes on every push). The vendor applies one key once and replays its first answer to a
        retry (API.md "Transport", 24 h), so a push repeated after a lost answer, a timeout or a
        crash applies the delta once. Pushes of one product run one at a time
        (:func:`gateway.services.adjustments.stock_lock`), so the level each reads back follows
        its own write.

        Before the call the delta is journaled (:func:`gateway.services.journal.expect`), so a
        report of the new level (the read-back, an ``inventory.low`` webhook, a poll), even one
        processed before this push records its outcome, is cached without ``inventory.updated``.

        Verdicts: ``201`` → ``applied``: the level is read back (``GET /inventory?product_id=``)
        and cached with the verdict and ``adjustment.applied``, the change's one event (unless
        the read-back shows more than this write: that is cached with its ``inventory.updated``).
        ``409 insufficient_stock`` or any other vendor 4xx (a product AI POS no longer has) →
        ``failed`` (``adjustment.failed``). 5xx, 429, timeouts, the POS unreachable → no verdict:
        :class:`~gateway.services.adjustments.PushDeferred`, or ``failed`` on the ``final`` attempt.

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
        if product is None:
            return await adjustments.not_applied(
                self.db, tenant_id, adjustment_id, f"unknown_product: product {row['product_id']} is no longer "
                "on this connection", fatal=True, final=final)
        try:
            async with adjustments.stock_lock(self.db, self.context.id, row["product_id"], row["location_id"]):
                return await self._push(adjustment_id, product, final=final)
        except LockBusy as exc:
            return await adjustments.not_applied(self.db, tenant_id, adjustment_id, exc, fatal=False, final=final)

    async def _push(self, adjustment_id: str, product: dict[str, Any], *, final: bool) -> dict[str, Any]:
        """The push under the stock row's lock (see :meth:`push_adjustment`)."""
        tenant_id = self.context.tenant_id
        async with self.db.read() as conn:  # again, under the lock: another push may have settled it
            row = await adjustments.load(conn, self.context.id, adjustment_id)
        if row["status"] != "pending":
            return render_adjustment(row)
        delta = Decimal(row["delta_milli"]) / 1000
        reason = row["reason"]
        data = {"product_id": product["id"], "delta": delta, "reason": reason,
                "vendor_reason": f"{reason}: {row['reference']}"[:500] if row["reference"] else reason}
        vendor_body = self._write_body("inventory", data, {"products": {product["id"]: product["remote_id"]}})
        async with self.db.transaction(tenant_id) as uow:  # journaled before the POS can report it
            await journal.expect(uow, connection_id=self.context.id, remote_id=product["remote_id"],
                                 delta_milli=row["delta_milli"], adjustment_id=adjustment_id,
                                 ttl=journal.window(self.settings))
        level = None
        async with self._session() as client:
            try:
                answer = await self._post(client, "/inventory/adjustments", vendor_body, f"tillgate-{adjustment_id}")
            except VendorError as exc:
                if _vendor_code(exc) == "insufficient_stock":
                    return await adjustments.not_applied(
                        self.db, tenant_id, adjustment_id, f"insufficient_stock: not enough stock of product "
                        f"{product['id']} at AI POS for a delta of {delta} ({exc.detail})", fatal=True, final=final)
                return await adjustments.not_applied(self.db, tenant_id, adjustment_id, exc,
                                                     fatal=not exc.retryable, final=final)
            try:
                level = await self._level(client, product["remote_id"])
            except VendorError as exc:  # applied: the answer tells the level right after the write
                log.info("aipos %s: could not re-read the stock of %s (%s)", self.context.id, product["remote_id"], exc.code)
                level = await self._level_after(answer, product)
        record = None
        if level is not None:
            maps = {"products": {product["remote_id"]: product["id"]}, "locations": {STORE_ID: row["location_id"]}}
            try:
                record = self._vendor_record("inventory", level, self._ctx(maps))
            except VendorError as exc:
                log.warning("aipos %s: the stock of %s read back cannot be mapped (%s)", self.context.id,
                            product["remote_id"], exc.detail)
        async with self.db.transaction(tenant_id) as uow:
            # the verdict first: a level event the read-back emits comes after its adjustment.applied
            settled = await adjustments.settle(uow, adjustment_id, "applied")
            if record is not None:
                inventory_links.landed(uow, row, product["remote_id"])  # a link's write is not a new change
                await self._upsert(uow, "inventory", record)
                await journal.close(uow, adjustment_id)  # read back in another state: not this write's echo
            return settled

    # -- inbound webhooks --------------------------------------------------------------------------
    def verify_webhook(self, headers: Mapping[str, str], body: bytes, now: float) -> InboundEvent:
        """Authenticate and parse one delivery (API.md "Webhooks"). Synchronous, no I/O.

        Order: a ``webhook_secret`` must be configured; ``AIPOS-Signature`` must be present and
        read ``t=<unix seconds>,v1=<hex>[,v1=...]``; ``AIPOS-Event-Id`` must be 1-200 printable
        ASCII characters; ``|now - t|`` at most ``tolerance_seconds`` (300); one ``v1`` must
        equal ``hex(HMAC-SHA256(webhook_secret, "<t>.<event id>.<raw body>"))`` (constant-time
        compare); then the body must be a JSON object ``{"id" = the event id, "type", "created_at",
        "data": {"object": {...}}}``.

        Returns:
            ``InboundEvent(id, type, occurred_at = created_at, payload = the whole body, numbers
            with a fraction as Decimal)``.

        Raises:
            WebhookSignatureInvalid: 401, no secret configured, no signature header, no ``v1``,
                a stale ``t`` or no matching signature.
            WebhookMalformed: 400, unreadable headers, a bad ``AIPOS-Signature`` or
                ``AIPOS-Event-Id``, a body that is not the JSON event (or whose id differs).
            Nothing else, for any input.
        """
        try:
            return self._verify(headers, body, now)
        except (WebhookSignatureInvalid, WebhookMalformed):
            raise
        except Exception as exc:  # a bug here must not turn an odd delivery into a 500
            log.exception("aipos %s: verifying a webhook delivery failed", self.context.id)
            raise WebhookMalformed("the delivery could not be read") from exc

    def _verify(self, headers: Mapping[str, str], body: bytes, now: float) -> InboundEvent:
        secret = self.context.credentials.get("webhook_secret")
        if not isinstance(secret, str) or not secret:
            raise WebhookSignatureInvalid("this connection has no webhook_secret: deliveries cannot be verified")
        if isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        if not isinstance(body, bytes):
            raise WebhookMalformed("the delivery has no body")
        signature = _header_values(headers, SIGNATURE_HEADER)
        if not signature:
            raise WebhookSignatureInvalid("the delivery has no AIPOS-Signature header")
        timestamp, candidates = _parse_signature(signature)
        event_ids = _header_values(headers, EVENT_ID_HEADER)
        if not event_ids:
            raise WebhookMalformed("the delivery has no AIPOS-Event-Id header")
        if len(set(event_ids)) != 1 or not _printable_ascii(event_ids[0], 200):
            raise WebhookMalformed("AIPOS-Event-Id must be one id of 1 to 200 printable ASCII characters")
        event_id = event_ids[0]
        if not candidates:
            raise WebhookSignatureInvalid("AIPOS-Signature has no v1 signature")
        if not isinstance(now, (int, float)) or not math.isfinite(now) or abs(now - int(timestamp)) > self.webhook_tolerance:
            raise WebhookSignatureInvalid(f"the signature's timestamp is more than {self.webhook_tolerance} s from now")
        expected = hmac.new(secret.encode("utf-8"), f"{timestamp}.{event_id}.".encode() + body,
                            hashlib.sha256).hexdigest().encode()
        matched = False
        for candidate in candidates:  # every candidate is compared: no early exit on a match
            if _HEX_SHA256.fullmatch(candidate) and hmac.compare_digest(expected, candidate.lower().encode()):
                matched = True
        if not matched:
            raise WebhookSignatureInvalid("no AIPOS-Signature v1 matches the delivery")
        try:
            doc = jsonutil.loads(body)
        except jsonutil.MalformedJSON as exc:
            raise WebhookMalformed("the webhook body is not JSON") from exc
        if not isinstance(doc, dict):
            raise WebhookMalformed("the webhook body is not a JSON object")
        if doc.get("id") != event_id:
            raise WebhookMalformed("the body's id is not the AIPOS-Event-Id")
        event_type = doc.get("type")
        if not isinstance(event_type, str) or not _printable_ascii(event_type, 100):
            raise WebhookMalformed("the webhook body has no type")
        data = doc.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise WebhookMalformed("the webhook body has no data.object")
        if event_type.startswith(("sale.", "product.")) and not isinstance(obj.get("id"), str):
            raise WebhookMalformed(f"the {event_type} object has no id")
        if event_type == "inventory.low" and not isinstance(obj.get("product_id"), str):
            raise WebhookMalformed("the inventory.low object has no product_id")
        created = doc.get("created_at")
        occurred_at = vendor_time(created)
        if created is not None and occurred_at is None:
            raise WebhookMalformed("the webhook body's created_at is not an RFC 3339 time")
        return InboundEvent(id=event_id, type=event_type, occurred_at=occurred_at, payload=doc)

    async def apply_webhook(self, event: InboundEvent) -> None:
        """Bring the cache up to date with one verified delivery; idempotent, order-proof.

        - ``sale.created``, ``sale.refunded``: ``data.object`` (the full sale) is upserted as the
          order (``order.refunded`` for a refund), references resolved through the cache as a poll
          does (not yet cached: ``null`` until the next poll).
        - ``product.created``, ``product.updated``: the product and its stock level (its ``stock``).
        - ``inventory.low``: thin; ``GET /products/{id}`` and its ``GET /inventory`` level are
          fetched and upserted (a product the vendor no longer has: nothing to do).
        - ``sync.completed``: the vendor's own cloud sync finished; nothing in it to cache.
        - any other type: ignored (logged), so a new vendor event never blocks the inbox.

        Every upsert carries the object's ``updated_at`` as ``remote_updated_at``: a delivery
        older than what is cached (a duplicate, a reordered one, a late retry) changes nothing.

        Raises:
            VendorError: the vendor could not be asked (``inventory.low``, or ``/health`` for the
                store's name before the first sync; retryable ones are retried by the worker);
                ``vendor_invalid_response`` (not retryable) when the object does not fit the mapping.
            WebhookMalformed: the payload is not an AI POS event.
        """
        payload = event.payload
        data = payload.get("data") if isinstance(payload, dict) else None
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise WebhookMalformed(f"event {event.id} has no data.object")
        kind = event.type
        if kind in ("sale.created", "sale.refunded"):
            await self._cache("orders", obj, event_type="order.refunded" if kind == "sale.refunded" else None)
        elif kind in ("product.created", "product.updated"):
            await self._cache_product(obj)
        elif kind == "inventory.low":
            product_id = obj.get("product_id")
            if not isinstance(product_id, str) or not product_id:
                raise WebhookMalformed(f"event {event.id}: inventory.low without a product_id")
            async with self._session() as client:
                try:
                    product = await client.json("GET", f"/products/{product_id}")
                except VendorNotFound:
                    log.info("aipos %s: %s: product %s is gone at the POS", self.context.id, event.id, product_id)
                    return
                level = await self._level(client, product_id)
            await self._cache_product(product, level)
        elif kind == "sync.completed":
            log.info("aipos %s: the POS finished a cloud sync (%s); nothing to cache", self.context.id, event.id)
        else:
            log.info("aipos %s: ignoring webhook %s of unknown type %r", self.context.id, event.id, kind)
