"""The Apex POS connector: reads by full scans, writes through the documented endpoints.

Transport is a :class:`~gateway.sdk.http.VendorClient` (``X-API-Key``, retries, rate limit,
circuit breaker); shape is ``mappings/apex/*.yaml``. Apex has no modified-since filter and no
webhooks, so every read is a full scan that the records cache diffs by content hash. See
``README.md`` for every choice made where the vendor doc is silent.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import select, update

from gateway import jsonutil
from gateway.errors import Conflict, NotFound, TillgateError, VendorError, field_error
from gateway.mapping import MappingContext, MappingError, MappingSpec, dumps_vendor_body, load_connector_mappings
from gateway.sdk.auth import ApiKeyHeader
from gateway.sdk.connector import Page, RemoteRecord, load_manifest, page_fingerprint
from gateway.sdk.http import VendorClient
from gateway.sdk.pagination import PageNumberPaginator
from gateway.sdk.remote import RemoteConnector
from gateway.services import adjustments, inventory_links, journal, records
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


class StockRow(dict):
    """One row of ``GET /inventory`` (API.md: ``{"product_id", "warehouse_id", "warehouse_name",
    "quantity"}``) with ``read_at``: when the gateway sent the request that read it (UTC).

    Apex stock rows carry no modification time, so the read time is the row's version: it becomes
    the cached level's ``remote_updated_at``, and a level read before another already cached (a
    poll or count that listed the stock before a push, stored after the push's read-back) is
    stale and changes nothing (:func:`gateway.services.records.upsert_many`)."""

    read_at: datetime

    def __init__(self, row: dict[str, Any], read_at: datetime) -> None:
        super().__init__(row)
        self.read_at = read_at




def _whole(value: Decimal, loc: tuple[str, ...]) -> int:
    if value != value.to_integral_value():
        raise field_error(loc, "Apex stock and sale quantities are whole numbers", "not_integer")
    return int(value)


class ApexConnector(RemoteConnector):
    """Apex POS (``vendor-docs/apex-pos-api.txt``): ``X-API-Key`` auth; the client, settings and id
    maps come from :class:`~gateway.sdk.remote.RemoteConnector`."""

    manifest: ClassVar[dict[str, Any]] = load_manifest("connectors.apex")
    mappings: ClassVar[dict[str, MappingSpec]] = _MAPPINGS
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
            threshold = self.settings.get("low_stock_threshold")  # Apex has none of its own
            body["low_stock_threshold"] = None if threshold in (None, "") else Decimal(str(threshold))
        elif entity == "orders" and isinstance(raw.get("date"), str):
            with contextlib.suppress(ValueError):
                created_at = datetime.fromisoformat(raw["date"].replace("Z", "+00:00")).astimezone(UTC)
        return RemoteRecord(remote_id=remote_id, body=body, raw=raw, created_at=created_at,
                            remote_updated_at=raw.read_at if isinstance(raw, StockRow) else None)

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

    async def _inventory_rows(self, client: VendorClient, warehouse_id: int | None = None) -> list[Any]:
        """``GET /inventory`` (``?warehouse_id=``): its rows, each object a :class:`StockRow`
        stamped with the time the request was sent.

        Raises:
            VendorError: the request failed, or ``vendor_invalid_response`` when ``data`` is not a list.
        """
        params = {} if warehouse_id is None else {"warehouse_id": warehouse_id}
        read_at = jsonutil.utcnow()
        body = await client.json("GET", "/inventory", params=params)
        rows = body.get("data") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise VendorError("Apex /inventory: data is not a list", vendor="apex", code="vendor_invalid_response")
        return [StockRow(row, read_at) if isinstance(row, dict) else row for row in rows]

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

    async def _cache(self, entity: str, raw: dict[str, Any], *, event_type: str | None = None,
                     uow: UnitOfWork | None = None, maps: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
        """Map an object Apex answered with ``maps``, else the id maps of its own references, and
        upsert it (:meth:`_upsert`, ``event_type``) in ``uow`` or a transaction of its own;
        return the cached record. Unlike the base's, the mapping is :meth:`_record` (a stock row
        keeps its read time as ``remote_updated_at``).

        Raises:
            MappingError: the object does not fit its mapping.
        """
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
            return (await self._upsert(uow, entity, record, event_type)).record
        async with self.db.transaction(self.context.tenant_id) as tx:
            return (await self._upsert(tx, entity, record, event_type)).record

    # -- catalog and customers ---------------------------------------------------------------------
    async def create_product(self, body: Any) -> dict[str, Any]:
        """``POST /products``, then the product as listed is cached. Apex has no SKU: a ``sku`` is
        sent as the barcode when no barcode is given; variants are refused."""
        if body.variants:
            raise field_error(("body", "variants"), "Apex products have no variants", "unsupported_by_vendor")
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
            raise field_error(("body", "variants"), "Apex products have no variants", "unsupported_by_vendor")
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
                raise field_error(("body", "lines", str(n), "product_id"), "Apex has no SKUs: give product_id", "missing")
            if line.variant_id:
                raise field_error(("body", "lines", str(n), "variant_id"), "Apex products have no variants", "unsupported_by_vendor")
            if line.discount:
                raise field_error(("body", "lines", str(n), "discount"), "Apex invoices take no discounts", "unsupported_by_vendor")
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
    async def _stock_refs(self, product_id: str | None, sku: str | None, variant_id: str | None,
                          location_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if variant_id:
            raise field_error(("body", "variant_id"), "Apex products have no variants", "unsupported_by_vendor")
        product = await self._live("products", product_id) if product_id else None
        if product is None and sku:
            async with self.db.read() as conn:
                product = await records.find_product_by_sku(conn, connection_id=self.context.id, sku=sku)
        if product is None:
            raise field_error(("body", "product_id"), "no such product on this connection", "unknown_product")
        location = await self._live("locations", location_id)
        if location is None:
            raise field_error(("body", "location_id"), "no such location on this connection", "unknown_location")
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
        """Accept a stock delta; the worker applies it through Apex's absolute set
        (:meth:`push_adjustment`, README "Inventory writes").

        Validated first (nothing is stored for a bad request), then stored ``pending`` with its
        ``adjustment`` job in one transaction (:func:`gateway.services.adjustments.store_pending`).

        Returns:
            The Adjustment, ``pending``.

        Raises:
            ValidationFailed: unknown product/location, variants, a fractional delta.
        """
        product, location = await self._stock_refs(body.product_id, body.sku, body.variant_id, body.location_id)
        delta = _whole(body.delta, ("body", "delta"))
        return await adjustments.store_delta(self.db, self.context, product_id=product["id"], location_id=location["id"],
                                             delta=delta, reason=body.reason, reference=body.reference)

    async def push_adjustment(self, adjustment_id: str, *, final: bool = False) -> dict[str, Any]:
        """One push of a ``pending`` adjustment as a read-modify-write of Apex's absolute set
        (README "Inventory writes: the guarantee"), under the stock row's lock.

        Read the quantity (``GET /inventory?warehouse_id=``); settle any push of this stock row
        left in doubt (its intent: see :meth:`_resolve_in_doubt`); then record the intent (the
        quantity read and the target = read + delta, with the delta in the write journal) and
        commit it *before* ``PATCH /inventory/{id}`` sets the target; read again:

        - the target → ``applied``; the value before → the set did not hold (a writer that read
          before it overwrote it): another round, at most ``STOCK_ATTEMPTS``, then no verdict;
          anything else → ``applied`` (the stock changed at the POS right after the set; retrying
          would apply the delta twice), ``last_error`` says so;
        - the target below zero → ``failed`` ``insufficient_stock`` (nothing set);
        - the set refused (4xx) → ``failed``; the set unanswered (5xx, timeout: it may have
          landed) → read at once: the target → ``applied``, the value before → no verdict (the
          next attempt sets it), anything else → ``failed`` ``outcome_unknown``; unreadable →
          no verdict, the intent stays and the next attempt (or the next push of this stock row)
          settles it from the count it reads.

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
        pid, wid = int(product["remote_id"]), int(location["remote_id"])
        try:
            current = await self._read_stock(client, pid, wid)
        except VendorError as exc:
            return await self._not_applied(adjustment_id, exc, fatal=not exc.retryable, final=final)
        quantity = int(current["quantity"])
        await self._resolve_in_doubt(product, location, current, attempt_of=adjustment_id)
        async with self.db.read() as conn:
            row = await adjustments.load(conn, self.context.id, adjustment_id)
        if row["status"] != "pending":  # its own earlier set, settled from the count just read
            return render_adjustment(row)
        delta = row["delta_milli"] // 1000
        notes = f"{row['reason']}: {row['reference']}" if row["reference"] else row["reason"]
        for _ in range(STOCK_ATTEMPTS):
            before, target = quantity, quantity + delta
            if target < 0:
                async with self.db.transaction(self.context.tenant_id) as uow:
                    await self._cache_level(uow, product, location, current)
                    return await adjustments.settle(uow, adjustment_id, "failed", last_error=(
                        f"insufficient_stock: product {product['id']} has {before} at location {location['id']}; "
                        f"a delta of {delta} would take it below zero"))
            async with self.db.transaction(self.context.tenant_id) as uow:  # the intent, durable before the set
                await held.verify(uow)
                await uow.conn.execute(update(t.adjustments).where(
                    t.adjustments.c.id == adjustment_id, t.adjustments.c.status == "pending").values(
                    intent_before_milli=before * 1000, intent_target_milli=target * 1000, updated_at=jsonutil.utcnow()))
                await journal.expect(uow, connection_id=self.context.id, remote_id=f"{pid}:{wid}",
                                     delta_milli=delta * 1000, adjustment_id=adjustment_id,
                                     ttl=journal.window(self.settings))
            set_at = jsonutil.utcnow()
            try:
                await self._set_stock(client, pid, wid, target, notes)
            except VendorError as exc:
                return await self._unanswered_set(client, adjustment_id, product, location, before, target, exc,
                                                  final=final)
            try:
                current = await self._read_stock(client, pid, wid)
            except VendorError as exc:  # the set was answered: it landed, and set the quantity to target
                log.info("apex %s: could not read back the stock of %s:%s (%s)", self.context.id, pid, wid, exc.code)
                landed = StockRow({**current, "quantity": target}, set_at)  # a read older than the set is stale
                return await self._applied(adjustment_id, product, location, landed)
            after = int(current["quantity"])
            if after == target:
                return await self._applied(adjustment_id, product, location, current)
            if after != before:
                return await self._applied(adjustment_id, product, location, current, note=(
                    f"the stock changed at the POS during the adjustment: set {target}, then read {after}"))
            await self._clear_intent(adjustment_id)  # overwritten by a writer that read before the set
            quantity = after
        return await self._not_applied(adjustment_id, f"stock_set_not_held: the set did not hold in {STOCK_ATTEMPTS} "
                                       "rounds (another writer kept overwriting it)", fatal=False, final=final)

    async def _unanswered_set(self, client: VendorClient, adjustment_id: str, product: dict[str, Any],
                              location: dict[str, Any], before: int, target: int, exc: VendorError, *,
                              final: bool) -> dict[str, Any]:
        """The ``PATCH`` failed: refused (4xx: not set), or unanswered (it may have landed): look now."""
        if not exc.retryable:
            await self._clear_intent(adjustment_id)
            return await self._not_applied(adjustment_id, exc, fatal=True, final=final)
        try:
            current = await self._read_stock(client, int(product["remote_id"]), int(location["remote_id"]))
        except VendorError:
            return await self._not_applied(adjustment_id, exc, fatal=False, final=final)
        now = int(current["quantity"])
        if now == target:  # it landed; only the answer was lost
            return await self._applied(adjustment_id, product, location, current)
        if now == before:  # it did not land: the next attempt sets it
            await self._clear_intent(adjustment_id)
            return await self._not_applied(adjustment_id, exc, fatal=False, final=final)
        async with self.db.transaction(self.context.tenant_id) as uow:
            await self._cache_level(uow, product, location, current)
            return await adjustments.settle(uow, adjustment_id, "failed", last_error=_outcome_unknown(before, target, now, exc))

    async def _resolve_in_doubt(self, product: dict[str, Any], location: dict[str, Any], current: dict[str, Any], *,
                                attempt_of: str | None = None) -> None:
        """Settle every push of this stock row whose set may have landed (``pending`` with an
        intent), from ``current``, the count just read under the lock: the intent's target →
        ``applied`` (the answer or the worker was lost after the set); its value before → not
        set (the intent is cleared: that adjustment's next push sets it); anything else →
        ``failed`` ``outcome_unknown`` (the stock also moved at the POS, so whether the set landed
        cannot be told). ``attempt_of``: the adjustment whose push is reading (its attempt counts)."""
        async with self.db.read() as conn:
            doubtful = (await conn.execute(select(t.adjustments).where(
                t.adjustments.c.connection_id == self.context.id, t.adjustments.c.product_id == product["id"],
                t.adjustments.c.location_id == location["id"], t.adjustments.c.status == "pending",
                t.adjustments.c.intent_target_milli.is_not(None)).order_by(t.adjustments.c.updated_at))).mappings().all()
        quantity = int(current["quantity"])
        for row in doubtful:
            before, target = row["intent_before_milli"] // 1000, row["intent_target_milli"] // 1000
            if quantity == before:
                await self._clear_intent(row["id"])
                continue
            async with self.db.transaction(self.context.tenant_id) as uow:
                # the verdict first: a level event the count emits comes after its adjustment event
                if quantity == target:  # the count includes the set: a link's write is not a new change
                    await adjustments.settle(uow, row["id"], "applied", attempt=row["id"] == attempt_of)
                    inventory_links.landed(uow, dict(row), f"{product['remote_id']}:{location['remote_id']}")
                else:
                    await adjustments.settle(uow, row["id"], "failed", attempt=row["id"] == attempt_of,
                                             last_error=_outcome_unknown(before, target, quantity, None))
                await self._cache_level(uow, product, location, current)
                if quantity == target:
                    await journal.close(uow, row["id"])

    async def _applied(self, adjustment_id: str, product: dict[str, Any], location: dict[str, Any],
                       current: dict[str, Any] | None, *, note: str | None = None) -> dict[str, Any]:
        """Settle ``applied``, caching the level read back (``None``: not read; the journal waits
        for the poll that brings it)."""
        async with self.db.transaction(self.context.tenant_id) as uow:
            # the verdict first: a level event the read-back emits comes after its adjustment.applied
            settled = await adjustments.settle(uow, adjustment_id, "applied", last_error=note)
            if current is not None:
                row = await adjustments.load(uow.conn, self.context.id, adjustment_id)
                inventory_links.landed(uow, row, f"{product['remote_id']}:{location['remote_id']}")
                await self._cache_level(uow, product, location, current)
                await journal.close(uow, adjustment_id)  # read back in another state: not this write's echo
            return settled

    async def _not_applied(self, adjustment_id: str, error: Any, *, fatal: bool, final: bool) -> dict[str, Any]:
        """:func:`gateway.services.adjustments.not_applied`, saying ``outcome_unknown`` when the
        adjustment is given up while a set of it may have landed."""
        if fatal or final:
            async with self.db.read() as conn:
                row = await adjustments.load(conn, self.context.id, adjustment_id)
            if row["intent_target_milli"] is not None:
                error = _outcome_unknown(row["intent_before_milli"] // 1000, row["intent_target_milli"] // 1000, None,
                                         error)
        return await adjustments.not_applied(self.db, self.context.tenant_id, adjustment_id, error, fatal=fatal,
                                             final=final)

    async def set_inventory_count(self, product_id: str, location_id: str, body: Any) -> dict[str, Any]:
        """Set the count absolutely with compare-and-set against ``expected_on_hand`` (read, compare,
        ``PATCH``, re-read) under the stock row's lock, after settling any adjustment push of the
        row left in doubt (a set in between would make it undecidable); returns the cached
        InventoryLevel (``inventory.updated`` when it changed).

        Raises:
            NotFound: unknown product or location.
            ValidationFailed: a variant or a fractional count.
            Conflict: ``stale_count`` with the POS's current ``on_hand``; ``write_in_progress``
                (retryable) when another process kept the stock row busy.
        """
        product = await self._live("products", product_id)
        if product is None:
            raise NotFound(f"no product {product_id!r} on this connection")
        location = await self._live("locations", location_id)
        if location is None:
            raise NotFound(f"no location {location_id!r} on this connection")
        if body.variant_id:
            raise field_error(("body", "variant_id"), "Apex products have no variants", "unsupported_by_vendor")
        target = _whole(body.on_hand, ("body", "on_hand"))
        pid, wid = int(product["remote_id"]), int(location["remote_id"])
        async with adjustments.stock_lock(self.db, self.context.id, product["id"], location["id"]), \
                self._session() as client:
            current = await self._read_stock(client, pid, wid)
            await self._resolve_in_doubt(product, location, current)
            on_hand = Decimal(int(current["quantity"]))
            if body.expected_on_hand is not None and on_hand != body.expected_on_hand:
                raise Conflict(f"on hand is {on_hand}, not the expected {body.expected_on_hand}",
                               code="stale_count", on_hand=str(on_hand))
            if on_hand != target:
                await self._set_stock(client, pid, wid, target, body.reason)
                current = await self._read_stock(client, pid, wid)
            async with self.db.transaction(self.context.tenant_id) as uow:
                return await self._cache_level(uow, product, location, current)


def _describe(error: Any) -> str:
    if isinstance(error, TillgateError):
        return f"{error.code}: {error.detail}"
    return str(error)


def _outcome_unknown(before: int, target: int, now: int | None, error: Any) -> str:
    """``last_error`` of an adjustment whose set of on hand from ``before`` to ``target`` may or
    may not have landed at Apex (``now``: the count read since, if one could be read)."""
    cause = f" ({_describe(error)})" if error is not None else ""
    if now is None:
        seen = "the POS could not be read to tell"
    else:
        seen = f"on hand is now {now}, neither, so the stock also moved at the POS"
    return (f"outcome_unknown: the set of on hand from {before} to {target} may or may not have landed and {seen}"
            f"{cause}; count the stock and correct it with PUT .../inventory/{{product_id}}/{{location_id}}")
