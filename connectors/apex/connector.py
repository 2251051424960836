"""The Apex POS connector: reads by full scans, writes through the documented endpoints.

Transport is a :class:`~gateway.sdk.http.VendorClient` (``X-API-Key``, retries, rate limit,
circuit breaker); shape is ``mappings/apex/*.yaml``. Apex has no modified-since filter and no
webhooks, so every read is a full scan that the records cache diffs by content hash. See
``README.md`` for every choice made where the vendor doc is silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import text

from gateway import jsonutil
from gateway.errors import Conflict, NotFound, ValidationFailed, VendorError
from gateway.ids import new_id
from gateway.mapping import MappingContext, MappingError, dumps_vendor_body, load_connector_mappings
from gateway.sdk.auth import ApiKeyHeader
from gateway.sdk.connector import Page, RemoteRecord, load_manifest, page_fingerprint
from gateway.sdk.http import VendorClient
from gateway.sdk.pagination import PageNumberPaginator
from gateway.sdk.remote import RemoteConnector
from gateway.services import records
from gateway.services.adjustments import render_adjustment
from gateway.storage import tables as t
from gateway.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
#: rows per page yielded from the unpaginated ``GET /inventory``
INVENTORY_CHUNK = 1000
#: read-PATCH-verify rounds of one inventory write before it is given up
STOCK_ATTEMPTS = 3
#: list pages walked back when looking for a record just written (bounded)
FIND_MAX_PAGES = 50

_MAPPINGS = load_connector_mappings("apex")
#: in-process serialisation of stock writes per (connection, product, location)
_STOCK_LOCKS: weakref.WeakValueDictionary[tuple[str, str, str], asyncio.Lock] = weakref.WeakValueDictionary()


def _invalid(loc: tuple[str, ...], msg: str, type_: str, *, code: str | None = None) -> ValidationFailed:
    return ValidationFailed(msg, code=code, errors=[{"loc": list(loc), "msg": msg, "type": type_}])


def _whole(value: Decimal, loc: tuple[str, ...]) -> int:
    if value != value.to_integral_value():
        raise _invalid(loc, "Apex stock and sale quantities are whole numbers", "not_integer")
    return int(value)


class _Row:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


class ApexConnector(RemoteConnector):
    """Apex POS (``vendor-docs/apex-pos-api.txt``): ``X-API-Key`` auth; the client, settings and id
    maps come from :class:`~gateway.sdk.remote.RemoteConnector`."""

    manifest: ClassVar[dict[str, Any]] = load_manifest("connectors.apex")
    health_fields: ClassVar[tuple[str, ...]] = ("business",)

    # -- transport ---------------------------------------------------------------------------------
    def auth(self) -> ApiKeyHeader:
        """``X-API-Key: apx_...`` (the doc's "Authentication")."""
        return ApiKeyHeader("X-API-Key", str(self.context.credentials.get("api_key") or "apx_missing"))

    # -- life cycle --------------------------------------------------------------------------------
    async def check(self) -> None:
        """``GET /health`` with the key: a 401 raises ``VendorCredentialsRejected`` (424)."""
        async with self._session() as client:
            body = await client.json("GET", "/health")
        if not isinstance(body, dict) or body.get("status") != "ok":
            raise VendorError("Apex /health did not answer status ok", vendor="apex", code="vendor_invalid_response")

    def _record(self, entity: str, raw: dict[str, Any], ctx: MappingContext) -> RemoteRecord:
        remote_id, body = _MAPPINGS[entity].read(raw, ctx)
        created_at = None
        if entity == "inventory":
            available = body["on_hand"] - self.safety_stock
            body["available"] = available if available > 0 else Decimal(0)
        elif entity == "orders" and isinstance(raw.get("date"), str):
            with contextlib.suppress(ValueError):
                created_at = datetime.fromisoformat(raw["date"].replace("Z", "+00:00")).astimezone(UTC)
        return RemoteRecord(remote_id=remote_id, body=body, raw=raw, created_at=created_at)

    # -- reads -------------------------------------------------------------------------------------
    def _pager(self) -> PageNumberPaginator:
        return PageNumberPaginator(page_size=self.page_size, records_path="data", total_path="total",
                                   page_path="page", page_size_path="limit")

    async def fetch(self, entity: str, *, since: Any = None, checkpoint: dict[str, Any] | None = None) -> AsyncIterator[Page]:
        """Full scans (Apex has no modified-since filter: ``since`` is ignored)."""
        reader = getattr(self, f"_fetch_{entity}", None)
        if reader is None:
            raise self._unsupported(f"reading {entity} from the vendor")
        async with self._session() as client:
            async for page in reader(client, checkpoint):
                yield page

    async def _paged(self, client: VendorClient, path: str, entity: str, maps: dict[str, dict[str, str]],
                     checkpoint: dict[str, Any] | None) -> AsyncIterator[Page]:
        """Pages of a list endpoint, mapped lazily, each fingerprinted by its response bytes, the
        entity's mapping file, the settings and the reference ``maps`` it resolves against."""
        ctx = self._ctx(maps)
        base = self.fingerprint_base(entity, _MAPPINGS[entity].digest, self.settings, maps)
        async for page in self._pager().pages(client, path, start=checkpoint):
            yield Page(load=lambda page=page: [self._record(entity, raw, ctx) for raw in page.records],
                       checkpoint=page.next_position, fingerprint=page_fingerprint(base, page.digest))

    async def _fetch_products(self, client: VendorClient, checkpoint: dict[str, Any] | None) -> AsyncIterator[Page]:
        maps = {"categories": await self._id_map("categories")}
        async for page in self._paged(client, "/products", "products", maps, checkpoint):
            yield page

    async def _fetch_customers(self, client: VendorClient, checkpoint: dict[str, Any] | None) -> AsyncIterator[Page]:
        async for page in self._paged(client, "/customers", "customers", {}, checkpoint):
            yield page

    async def _fetch_orders(self, client: VendorClient, checkpoint: dict[str, Any] | None) -> AsyncIterator[Page]:
        maps = {e: await self._id_map(e) for e in ("customers", "products", "locations")}
        async for page in self._paged(client, "/invoices", "orders", maps, checkpoint):
            yield page

    async def _fetch_categories(self, client: VendorClient, checkpoint: dict[str, Any] | None) -> AsyncIterator[Page]:
        seen: dict[int, None] = {}
        async for page in self._pager().pages(client, "/products"):
            for raw in page.records:
                if raw.get("category_id") is not None:
                    seen.setdefault(raw["category_id"], None)
        ctx = self._ctx()
        yield Page([self._record("categories", {"category_id": cid, "name": f"Category {cid}"}, ctx) for cid in seen], None)

    async def _inventory_rows(self, client: VendorClient, warehouse_id: int | None = None) -> list[dict[str, Any]]:
        params = {} if warehouse_id is None else {"warehouse_id": warehouse_id}
        body = await client.json("GET", "/inventory", params=params)
        rows = body.get("data") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise VendorError("Apex /inventory: data is not a list", vendor="apex", code="vendor_invalid_response")
        return rows

    async def _fetch_locations(self, client: VendorClient, checkpoint: dict[str, Any] | None) -> AsyncIterator[Page]:
        warehouses: dict[Any, dict[str, Any]] = {}
        for row in await self._inventory_rows(client):
            warehouses.setdefault(row.get("warehouse_id"), {"warehouse_id": row.get("warehouse_id"),
                                                            "warehouse_name": row.get("warehouse_name")})
        ctx = self._ctx()
        yield Page([self._record("locations", w, ctx) for w in warehouses.values()], None)

    async def _fetch_inventory(self, client: VendorClient, checkpoint: dict[str, Any] | None) -> AsyncIterator[Page]:
        rows = await self._inventory_rows(client)
        ctx = self._ctx({"products": await self._id_map("products"), "locations": await self._id_map("locations")})
        start = int((checkpoint or {}).get("row", 0))
        for offset in range(start, len(rows), INVENTORY_CHUNK):
            out = []
            for raw in rows[offset:offset + INVENTORY_CHUNK]:
                try:
                    out.append(self._record("inventory", raw, ctx))
                except MappingError as exc:  # a product or warehouse not (yet) in the cache
                    log.info("apex %s: skipping stock row %s:%s (%s)", self.context.id, raw.get("product_id"),
                             raw.get("warehouse_id"), exc)
            end = offset + INVENTORY_CHUNK
            yield Page(out, {"row": end} if end < len(rows) else None)
        if start >= len(rows):
            yield Page([], None)

    # -- write helpers -----------------------------------------------------------------------------
    def _write_body(self, entity: str, data: dict[str, Any], remote: dict[str, dict[str, str]]) -> dict[str, Any]:
        try:
            return _MAPPINGS[entity].write(data, self._ctx(remote=remote))
        except MappingError as exc:
            field = (exc.field or "body").lstrip(".")
            raise _invalid(("body", *[p for p in field.split(".") if p]), str(exc), "unsupported_by_vendor") from exc

    async def _send(self, client: VendorClient, method: str, path: str, body: dict[str, Any]) -> Any:
        return await client.json(method, path, content=dumps_vendor_body(body), headers=JSON_HEADERS)

    async def _find(self, client: VendorClient, path: str, rid: int) -> dict[str, Any]:
        """The listed record with id ``rid`` (lists are ordered by id; a record's position <= its id)."""
        limit = 100
        first = await client.json("GET", path, params={"page": 1, "limit": limit})
        total = first.get("total") if isinstance(first, dict) else None
        last_page = max(1, -(-int(total) // limit)) if isinstance(total, int) else -(-rid // limit)
        page = max(1, min(-(-rid // limit), last_page))
        for _ in range(FIND_MAX_PAGES):
            body = first if page == 1 else await client.json("GET", path, params={"page": page, "limit": limit})
            data = body.get("data") or []
            for item in data:
                if item.get("id") == rid:
                    return item
            if page == 1 or (data and data[-1].get("id", 0) < rid):
                break
            page -= 1
        raise VendorError(f"Apex accepted the write but {path} does not list id {rid}", vendor="apex",
                          code="vendor_invalid_response")

    async def _cache(self, entity: str, raw: dict[str, Any], *, uow: UnitOfWork | None = None,
                     maps: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
        if maps is None:
            maps = {}
            if entity == "products" and raw.get("category_id") is not None:
                maps["categories"] = await self._id_map("categories", [str(raw["category_id"])])
            if entity == "orders":
                items = raw.get("items") or []
                maps["products"] = await self._id_map("products", [str(i.get("product_id")) for i in items])
                maps["customers"] = await self._id_map("customers", [str(raw.get("customer_id"))])
                maps["locations"] = await self._id_map("locations", [str(raw.get("warehouse_id"))])
        record = self._record(entity, raw, self._ctx(maps))
        if uow is not None:
            return (await self._upsert(uow, entity, record)).record
        async with self.db.transaction(self.context.tenant_id) as tx:
            return (await self._upsert(tx, entity, record)).record

    async def _upsert(self, uow: UnitOfWork, entity: str, record: RemoteRecord) -> records.UpsertResult:
        return await records.upsert(uow, connection_id=self.context.id, entity=entity, remote_id=record.remote_id,
                                    body=record.body, raw=record.raw, created_at=record.created_at)

    async def _live(self, entity: str, record_id: str) -> dict[str, Any] | None:
        async with self.db.read() as conn:
            return await records.load(conn, connection_id=self.context.id, entity=entity, record_id=record_id,
                                      include_deleted=False)

    # -- catalog and customers ---------------------------------------------------------------------
    async def create_product(self, body: Any) -> dict[str, Any]:
        """``POST /products``, then the product as listed is cached. Apex has no SKU: a ``sku`` is
        sent as the barcode when no barcode is given; variants are refused."""
        if body.variants:
            raise _invalid(("body", "variants"), "Apex products have no variants", "unsupported_by_vendor")
        data = body.model_dump()
        if not data.get("barcode") and data.get("sku"):
            data["barcode"] = data["sku"]
        remote = {"categories": await self._remote_map("categories", data.get("category_ids") or [])}
        vendor_body = self._write_body("products", data, remote)
        async with self._session() as client:
            answer = await self._send(client, "POST", "/products", vendor_body)
            raw = await self._find(client, "/products", int(answer["product_id"]))
        return await self._cache("products", raw)

    async def update_product(self, product_id: str, body: Any) -> dict[str, Any]:
        """``PUT /products/{id}`` with only the fields given; then the listed product is cached."""
        current = await self._live("products", product_id)
        if current is None:
            raise NotFound(f"no product {product_id!r} on this connection")
        if body.variants:
            raise _invalid(("body", "variants"), "Apex products have no variants", "unsupported_by_vendor")
        data = body.model_dump(exclude_unset=True)
        if not data.get("barcode") and data.get("sku"):
            data["barcode"] = data["sku"]
        remote = {"categories": await self._remote_map("categories", data.get("category_ids") or [])}
        vendor_body = self._write_body("products", data, remote)
        async with self._session() as client:
            if vendor_body:
                await self._send(client, "PUT", f"/products/{int(current['remote_id'])}", vendor_body)
            raw = await self._find(client, "/products", int(current["remote_id"]))
        return await self._cache("products", raw)

    async def create_customer(self, body: Any) -> dict[str, Any]:
        """``POST /customers``; then the customer as listed (no address/credit limit) is cached."""
        vendor_body = self._write_body("customers", body.model_dump(), {})
        async with self._session() as client:
            answer = await self._send(client, "POST", "/customers", vendor_body)
            raw = await self._find(client, "/customers", int(answer["customer_id"]))
        return await self._cache("customers", raw)

    async def create_order(self, body: Any) -> dict[str, Any]:
        """``POST /invoices`` (lines by ``product_id``, whole quantities, one tender); then the
        invoice as listed is cached (``order.created``)."""
        for n, line in enumerate(body.lines):
            if not line.product_id:
                raise _invalid(("body", "lines", str(n), "product_id"), "Apex has no SKUs: give product_id", "missing")
            if line.variant_id:
                raise _invalid(("body", "lines", str(n), "variant_id"), "Apex products have no variants", "unsupported_by_vendor")
            if line.discount:
                raise _invalid(("body", "lines", str(n), "discount"), "Apex invoices take no discounts", "unsupported_by_vendor")
            _whole(line.quantity, ("body", "lines", str(n), "quantity"))
        data = body.model_dump()
        remote = {
            "products": await self._remote_map("products", [line.product_id for line in body.lines]),
            "customers": await self._remote_map("customers", [body.customer_id]),
            "locations": await self._remote_map("locations", [body.location_id]),
        }
        vendor_body = self._write_body("orders", data, remote)
        async with self._session() as client:
            answer = await self._send(client, "POST", "/invoices", vendor_body)
            raw = await self._find(client, "/invoices", int(answer["invoice_id"]))
        return await self._cache("orders", raw)

    # -- inventory -----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _stock_lock(self, product_id: str, location_id: str) -> AsyncIterator[UnitOfWork]:
        """Serialise writes to one stock row: an asyncio lock in this process, then a transaction
        holding a PostgreSQL advisory lock (SQLite write transactions are already exclusive)."""
        key = (self.context.id, product_id, location_id)
        lock = _STOCK_LOCKS.get(key)
        if lock is None:
            lock = _STOCK_LOCKS[key] = asyncio.Lock()
        async with lock, self.db.transaction(self.context.tenant_id) as uow:
            if uow.dialect == "postgresql":
                await uow.conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                                       {"key": "apex-stock:" + ":".join(key)})
            yield uow

    async def _stock_refs(self, product_id: str | None, sku: str | None, variant_id: str | None,
                          location_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if variant_id:
            raise _invalid(("body", "variant_id"), "Apex products have no variants", "unsupported_by_vendor")
        product = await self._live("products", product_id) if product_id else None
        if product is None and sku:
            async with self.db.read() as conn:
                product = await records.find_product_by_sku(conn, connection_id=self.context.id, sku=sku)
        if product is None:
            raise _invalid(("body", "product_id"), "no such product on this connection", "unknown_product")
        location = await self._live("locations", location_id)
        if location is None:
            raise _invalid(("body", "location_id"), "no such location on this connection", "unknown_location")
        return product, location

    async def _read_stock(self, client: VendorClient, pid: int, wid: int) -> dict[str, Any]:
        for row in await self._inventory_rows(client, wid):
            if row.get("product_id") == pid and row.get("warehouse_id") == wid:
                return row
        raise VendorError(f"Apex lists no stock row for product {pid} in warehouse {wid}", vendor="apex",
                          code="vendor_not_found")

    async def _set_stock(self, client: VendorClient, pid: int, wid: int, quantity: int, notes: str | None) -> None:
        body: dict[str, Any] = {"product_id": pid, "warehouse_id": wid, "quantity": quantity}
        if notes:
            body["notes"] = notes[:1000]
        await self._send(client, "PATCH", f"/inventory/{pid}", body)

    async def _cache_level(self, uow: UnitOfWork, product: dict[str, Any], location: dict[str, Any],
                           row: dict[str, Any]) -> dict[str, Any]:
        maps = {"products": {product["remote_id"]: product["id"]}, "locations": {location["remote_id"]: location["id"]}}
        return await self._cache("inventory", row, uow=uow, maps=maps)

    async def create_adjustment(self, body: Any) -> dict[str, Any]:
        """Apply a stock delta through Apex's absolute set (see README "Inventory writes").

        Under the per-stock-row lock: read the quantity, ``PATCH`` quantity + delta, read again.
        The re-read equal to the target: applied. Equal to the value before: the set was lost
        (overwritten by a writer that read before it), so the round is retried (at most
        ``STOCK_ATTEMPTS``). Any other value: someone changed the stock right after the set; the
        delta is taken as applied and ``last_error`` records the drift. A vendor failure records
        the adjustment as ``failed`` (``adjustment.failed``) and returns it.

        Raises:
            ValidationFailed: unknown product/location, variants, a fractional delta.
            Conflict: ``insufficient_stock`` when the delta would take the count below zero.
        """
        product, location = await self._stock_refs(body.product_id, body.sku, body.variant_id, body.location_id)
        delta = _whole(body.delta, ("body", "delta"))
        pid, wid = int(product["remote_id"]), int(location["remote_id"])
        notes = f"{body.reason}: {body.reference}" if body.reference else body.reason
        attempts, last_error, status, row = 0, None, "failed", None
        async with self._stock_lock(product["id"], location["id"]) as uow:
            async with self._session() as client:
                try:
                    while attempts < STOCK_ATTEMPTS:
                        attempts += 1
                        before = int((await self._read_stock(client, pid, wid))["quantity"])
                        target = before + delta
                        if target < 0:
                            raise Conflict(
                                f"not enough stock of product {product['id']} at location {location['id']} ({before})",
                                code="insufficient_stock", product_id=product["id"], location_id=location["id"],
                            )
                        await self._set_stock(client, pid, wid, target, notes)
                        row = await self._read_stock(client, pid, wid)
                        after = int(row["quantity"])
                        if after == target:
                            status, last_error = "applied", None
                            break
                        if after != before:
                            status = "applied"
                            last_error = (f"the stock changed at the POS during the adjustment: set {target}, "
                                          f"then read {after}")
                            break
                        last_error = f"the set to {target} did not hold (read {after} again); retried"
                    else:
                        last_error = f"the stock set did not hold after {attempts} attempts"
                except VendorError as exc:
                    status, last_error = "failed", f"{exc.code}: {exc.detail}"
            now = jsonutil.utcnow()
            values = {
                "id": new_id("adjustment"), "tenant_id": self.context.tenant_id, "connection_id": self.context.id,
                "product_id": product["id"], "variant_id": None, "location_id": location["id"],
                "delta_milli": delta * 1000, "reason": body.reason, "reference": body.reference, "status": status,
                "attempts": attempts, "last_error": last_error, "applied_at": now if status == "applied" else None,
                "created_at": now, "updated_at": now,
            }
            await uow.conn.execute(t.adjustments.insert().values(**values))
            if row is not None:
                await self._cache_level(uow, product, location, row)
            adjustment = render_adjustment(_Row(values))
            uow.emit(f"adjustment.{status}", self.context.id, adjustment,
                     ["status", "applied_at"] if status == "applied" else ["status", "last_error"])
        return adjustment

    async def set_inventory_count(self, product_id: str, location_id: str, body: Any) -> dict[str, Any]:
        """Set the count absolutely with compare-and-set against ``expected_on_hand`` (read, compare,
        ``PATCH``, re-read) under the same per-stock-row lock; returns the cached InventoryLevel.

        Raises:
            NotFound: unknown product or location.
            ValidationFailed: a variant or a fractional count.
            Conflict: ``stale_count`` with the POS's current ``on_hand``.
        """
        product = await self._live("products", product_id)
        if product is None:
            raise NotFound(f"no product {product_id!r} on this connection")
        location = await self._live("locations", location_id)
        if location is None:
            raise NotFound(f"no location {location_id!r} on this connection")
        if body.variant_id:
            raise _invalid(("body", "variant_id"), "Apex products have no variants", "unsupported_by_vendor")
        target = _whole(body.on_hand, ("body", "on_hand"))
        pid, wid = int(product["remote_id"]), int(location["remote_id"])
        async with self._stock_lock(product["id"], location["id"]) as uow:
            async with self._session() as client:
                current = await self._read_stock(client, pid, wid)
                on_hand = Decimal(int(current["quantity"]))
                if body.expected_on_hand is not None and on_hand != body.expected_on_hand:
                    raise Conflict(f"on hand is {on_hand}, not the expected {body.expected_on_hand}",
                                   code="stale_count", on_hand=str(on_hand))
                if on_hand != target:
                    await self._set_stock(client, pid, wid, target, body.reason)
                    current = await self._read_stock(client, pid, wid)
            return await self._cache_level(uow, product, location, current)
