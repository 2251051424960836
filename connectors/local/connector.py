"""The local connector: a POS engine that keeps its data in the gateway's own database.

Its native format is the unified model, so its records need no mapping and its ``remote_id`` is
the record's own id (inventory records: ``"{product_id}:{variant_id or ''}:{location_id}"``).
Every write is one transaction: the records, the stock ledger (``stock_levels`` and
``stock_movements``), ``adjustments`` and the events commit together or not at all.

Stock is changed only by a conditional ``UPDATE stock_levels ... RETURNING``, never read then
written, so concurrent sales cannot oversell on SQLite (serialised writers) or PostgreSQL
(READ COMMITTED: the UPDATE takes the row lock and re-checks its condition). Rows are locked in a
fixed order (stock levels sorted by id, then the customer, then the connection's receipt
counter, then the tenant's event counter) so transactions do not deadlock.

See ``connectors/local/README.md`` for every behaviour and choice.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, insert, select, update

from connectors.local import engine as E
from gateway import jsonutil
from gateway.errors import Conflict, NotFound, field_error
from gateway.ids import new_id
from gateway.sdk.connector import Connector, load_manifest
from gateway.services import adjustments, inventory_links, records
from gateway.services.adjustments import render_adjustment
from gateway.storage import tables as t
from gateway.storage.uow import UnitOfWork

Loc = tuple[Any, ...]




def _utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime (how every timestamp column is stored); naive input is taken as UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def inventory_remote_id(product_id: str, variant_id: str | None, location_id: str) -> str:
    """The ``remote_id`` of the inventory record of one (product, variant, location)."""
    return f"{product_id}:{variant_id or ''}:{location_id}"


class LocalConnector(Connector):
    """The built-in POS engine: catalog, customers, sales with tax and tenders, refunds, voids,
    and a stock ledger with adjustments and compare-and-set counts.

    Settings (``self.context.settings``, defaults from the manifest): ``currency``,
    ``timezone``, ``safety_stock`` (decimal string), ``allow_negative_stock``,
    ``low_stock_threshold`` (decimal string or null), ``loyalty_points_per_unit`` (int).

    Every write method returns the unified record (dict, JSON-ready: money and quantities as
    decimal strings) as stored in the records cache, and raises:

    * :class:`NotFound` (404) for an unknown path id (another connection's id included);
    * :class:`ValidationFailed` (422) for bad references in the body, with ``errors``;
    * :class:`Conflict` (409) for stock and state conflicts (``insufficient_stock``,
      ``stale_count``, ``order_not_refundable``, ``order_not_voidable``).
    """

    manifest = load_manifest("connectors.local")

    # -- settings ------------------------------------------------------------------------------
    @property
    def currency(self) -> str:
        """The connection's ISO 4217 currency (setting ``currency``, default GBP)."""
        return str(self.context.settings.get("currency") or "GBP")

    @property
    def allow_negative(self) -> bool:
        """Whether sales and adjustments may take on hand below zero."""
        return bool(self.context.settings.get("allow_negative_stock", False))

    @property
    def safety_milli(self) -> int:
        """``safety_stock`` in thousandths."""
        return E.to_milli(Decimal(str(self.context.settings.get("safety_stock") or "0")))

    @property
    def default_threshold_milli(self) -> int | None:
        """The ``low_stock_threshold`` setting in thousandths (``None``: no default)."""
        value = self.context.settings.get("low_stock_threshold")
        return None if value in (None, "") else E.to_milli(Decimal(str(value)))

    @property
    def points_per_unit(self) -> int:
        """Loyalty points per whole currency unit paid."""
        return int(self.context.settings.get("loyalty_points_per_unit") or 0)

    def _money(self, value: Decimal) -> str:
        return E.money_str(value, self.currency)

    # -- life cycle ----------------------------------------------------------------------------
    async def setup(self, uow: UnitOfWork) -> None:
        """Create the connection's first location, "Main" (kind ``store``, the setting's time zone)."""
        await self._insert_location(
            uow, {"name": "Main", "kind": "store", "address": None, "timezone": self.context.settings.get("timezone")}
        )
        await uow.conn.execute(insert(t.receipt_counters).values(connection_id=self.context.id, last_number=0))

    # -- shared helpers --------------------------------------------------------------------------
    async def _load(self, conn: Any, entity: str, record_id: str | None) -> dict[str, Any] | None:
        if not record_id:
            return None
        return await records.load(conn, connection_id=self.context.id, entity=entity, record_id=record_id, include_deleted=False)

    async def _lock_record(self, uow: UnitOfWork, entity: str, record_id: str) -> dict[str, Any] | None:
        """Load a live record holding its row lock until commit (PostgreSQL; SQLite is serialised)."""
        row = (
            await uow.conn.execute(
                select(t.records.c.data)
                .where(
                    t.records.c.connection_id == self.context.id,
                    t.records.c.entity == entity,
                    t.records.c.id == record_id,
                    t.records.c.deleted_at.is_(None),
                )
                .with_for_update()
            )
        ).first()
        return None if row is None else jsonutil.loads(row.data)

    async def _lock_connection(self, uow: UnitOfWork) -> None:
        """Serialise per-connection uniqueness checks (SKU, receipt number) on PostgreSQL."""
        await uow.conn.execute(select(t.connections.c.id).where(t.connections.c.id == self.context.id).with_for_update())

    async def _live(self, conn: Any, entity: str) -> list[dict[str, Any]]:
        rows = (
            await conn.execute(
                select(t.records.c.data)
                .where(
                    t.records.c.connection_id == self.context.id,
                    t.records.c.entity == entity,
                    t.records.c.deleted_at.is_(None),
                )
                .order_by(t.records.c.created_at, t.records.c.id)
            )
        ).all()
        return [jsonutil.loads(row.data) for row in rows]

    async def _upsert(self, uow: UnitOfWork, entity: str, record_id: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        result = await records.upsert(
            uow, connection_id=self.context.id, entity=entity, remote_id=record_id, record_id=record_id, body=body, **kw
        )
        return result.record

    @staticmethod
    def _body(record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record.items() if k not in records.COMMON_FIELDS and k != "raw"}

    # -- stock ledger ----------------------------------------------------------------------------
    async def _level(self, conn: Any, product_id: str, variant_id: str | None, location_id: str) -> Any:
        return (
            await conn.execute(
                select(t.stock_levels).where(
                    t.stock_levels.c.connection_id == self.context.id,
                    t.stock_levels.c.product_id == product_id,
                    t.stock_levels.c.variant_id == (variant_id or ""),
                    t.stock_levels.c.location_id == location_id,
                )
            )
        ).first()

    async def _apply_delta(self, uow: UnitOfWork, level_id: str, delta_milli: int, *, guard: bool) -> Any:
        """Atomically add ``delta_milli`` to a level; with ``guard`` only if on hand stays ≥ 0.

        Returns the row (``on_hand_milli``, ``low_stock_threshold_milli``) after the change, or
        ``None`` when the guard refused it.

        Raises:
            Conflict: ``stock_out_of_range`` when on hand would reach 10^15 units (either sign).
        """
        stmt = (
            update(t.stock_levels)
            .where(t.stock_levels.c.id == level_id, t.stock_levels.c.connection_id == self.context.id)
            .values(on_hand_milli=t.stock_levels.c.on_hand_milli + delta_milli, updated_at=jsonutil.utcnow())
            .returning(t.stock_levels.c.on_hand_milli, t.stock_levels.c.low_stock_threshold_milli)
        )
        if guard and delta_milli < 0 and not self.allow_negative:
            stmt = stmt.where(t.stock_levels.c.on_hand_milli + delta_milli >= 0)
        # On hand stays a Quantity (under 10^15 units either way), well inside BIGINT.
        limit = int(E.MAX_AMOUNT) * E.MILLI
        stmt = stmt.where(func.abs(t.stock_levels.c.on_hand_milli + delta_milli) < limit)
        row = (await uow.conn.execute(stmt)).first()
        if row is None:
            current = (await uow.conn.execute(
                select(t.stock_levels.c.on_hand_milli).where(t.stock_levels.c.id == level_id))).scalar()
            if current is not None and abs(current + delta_milli) >= limit:
                raise Conflict("the stock level would be out of range (at most 15 integer digits)",
                               code="stock_out_of_range")
        return row

    async def _movement(
        self,
        uow: UnitOfWork,
        level: Any,
        delta_milli: int,
        after_milli: int,
        reason: str,
        *,
        reference: str | None = None,
        order_id: str | None = None,
        adjustment_id: str | None = None,
    ) -> None:
        await uow.conn.execute(
            insert(t.stock_movements).values(
                id=new_id("movement"),
                tenant_id=self.context.tenant_id,
                connection_id=self.context.id,
                product_id=level.product_id,
                variant_id=level.variant_id,
                location_id=level.location_id,
                delta_milli=delta_milli,
                on_hand_after_milli=after_milli,
                reason=reason,
                reference=reference[:200] if reference else None,
                order_id=order_id,
                adjustment_id=adjustment_id,
                created_at=jsonutil.utcnow(),
            )
        )

    async def _write_inventory(
        self,
        uow: UnitOfWork,
        level: Any,
        on_hand_milli: int,
        threshold_milli: int | None,
    ) -> dict[str, Any]:
        """Upsert the inventory record of a level (``inventory.updated``; ``inventory.low`` when
        ``available`` crossed to at or below the threshold, by the records cache's rule in
        :func:`gateway.services.records.upsert_many`, as for every connector)."""
        available = max(on_hand_milli - self.safety_milli, 0)
        body = {
            "product_id": level.product_id,
            "variant_id": level.variant_id or None,
            "location_id": level.location_id,
            "on_hand": E.qty_str(on_hand_milli),
            "available": E.qty_str(available),
            "low_stock_threshold": None if threshold_milli is None else E.qty_str(threshold_milli),
        }
        result = await records.upsert(
            uow,
            connection_id=self.context.id,
            entity="inventory",
            remote_id=inventory_remote_id(level.product_id, level.variant_id, level.location_id),
            record_id=level.id,
            body=body,
        )
        return result.record

    async def _create_levels(
        self, uow: UnitOfWork, product: dict[str, Any], location_ids: list[str], threshold_milli: int | None
    ) -> None:
        """Create missing stock levels (on hand 0) and their inventory records for a tracked product."""
        if not product.get("track_inventory"):
            return
        variant_ids = [v["id"] for v in product.get("variants") or []] or [""]
        for location_id in location_ids:
            for variant_id in variant_ids:
                if await self._level(uow.conn, product["id"], variant_id, location_id) is not None:
                    continue
                level_id = new_id("inventory")
                values = {
                    "id": level_id,
                    "tenant_id": self.context.tenant_id,
                    "connection_id": self.context.id,
                    "product_id": product["id"],
                    "variant_id": variant_id,
                    "location_id": location_id,
                    "on_hand_milli": 0,
                    "low_stock_threshold_milli": threshold_milli,
                    "updated_at": jsonutil.utcnow(),
                }
                await uow.conn.execute(insert(t.stock_levels).values(**values))
                await self._write_inventory(uow, _Row(values), 0, threshold_milli)

    async def _product_threshold(self, conn: Any, product_id: str) -> int | None:
        """A product's low-stock threshold: the one its existing levels carry, else the setting."""
        row = (
            await conn.execute(
                select(t.stock_levels.c.low_stock_threshold_milli)
                .where(t.stock_levels.c.connection_id == self.context.id, t.stock_levels.c.product_id == product_id)
                .limit(1)
            )
        ).first()
        return row[0] if row is not None else self.default_threshold_milli

    # -- locations and categories ----------------------------------------------------------------
    async def _insert_location(self, uow: UnitOfWork, body: dict[str, Any]) -> dict[str, Any]:
        location_id = new_id("location")
        record = await self._upsert(uow, "locations", location_id, body)
        for product in await self._live(uow.conn, "products"):
            if product.get("track_inventory"):
                threshold = await self._product_threshold(uow.conn, product["id"])
                await self._create_levels(uow, product, [location_id], threshold)
        return record

    async def create_location(self, body: Any) -> dict[str, Any]:
        """Add a location (``LocationCreate``); every tracked product (each variant) gets a stock
        level with on hand 0 there. Returns the Location record."""
        async with self.db.transaction(self.context.tenant_id) as uow:
            return await self._insert_location(
                uow, {"name": body.name, "kind": body.kind, "address": _dump(body.address), "timezone": body.timezone}
            )

    async def create_category(self, body: Any) -> dict[str, Any]:
        """Add a category (``CategoryCreate``).

        Raises:
            ValidationFailed: ``parent_id`` is not a live category of this connection.
        """
        async with self.db.transaction(self.context.tenant_id) as uow:
            if body.parent_id and await self._load(uow.conn, "categories", body.parent_id) is None:
                raise field_error(("body", "parent_id"), "no such category on this connection", "unknown_category")
            category_id = new_id("category")
            return await self._upsert(uow, "categories", category_id, {"name": body.name, "parent_id": body.parent_id})

    # -- products --------------------------------------------------------------------------------
    async def _check_categories(self, conn: Any, category_ids: list[str]) -> None:
        for index, category_id in enumerate(category_ids):
            if await self._load(conn, "categories", category_id) is None:
                raise field_error(("body", "category_ids", index), "no such category on this connection", "unknown_category")

    async def _check_sku(self, conn: Any, sku: str | None, product_id: str | None) -> None:
        if not sku:
            return
        other = await records.find_product_by_sku(conn, connection_id=self.context.id, sku=sku)
        if other is not None and other["id"] != product_id:
            raise field_error(("body", "sku"), f"a product with SKU {sku!r} already exists", "duplicate_sku", code="duplicate_sku")

    def _variants(self, given: list[Any], existing: list[dict[str, Any]]) -> list[dict[str, Any]]:
        known = {v["id"]: v for v in existing}
        out = []
        for index, variant in enumerate(given):
            if variant.id is not None and variant.id not in known:
                raise field_error(("body", "variants", index, "id"), "not a variant of this product", "unknown_variant")
            variant_id = variant.id or new_id("variant")
            out.append(
                {
                    "id": variant_id,
                    "remote_id": variant_id,
                    "sku": variant.sku,
                    "barcode": variant.barcode,
                    "name": variant.name,
                    "options": dict(variant.options),
                    "price": None if variant.price is None else self._money(variant.price),
                    "cost": None if variant.cost is None else self._money(variant.cost),
                    "active": variant.active,
                }
            )
        return out

    def _taxes(self, components: list[E.TaxComponent]) -> tuple[str, list[dict[str, Any]]]:
        try:
            rate = E.rate_str(E.effective_rate(components))
        except E.AmountOutOfRange as exc:
            raise field_error(("body", "taxes"), str(exc), "amount_out_of_range") from None
        return rate, [{"name": c.name, "rate": E.rate_str(c.rate), "compound": c.compound} for c in components]

    async def create_product(self, body: Any) -> dict[str, Any]:
        """Create a product (``ProductCreate``) with its variants (ids ``var_...``).

        Taxes: ``taxes`` gives the components and ``tax_rate`` becomes their effective combined
        rate; only ``tax_rate`` gives one component "Tax"; neither gives rate 0 and no taxes.
        A tracked product gets stock levels (on hand 0, threshold ``low_stock_threshold`` or the
        setting) at every location, per variant. Emits ``product.created`` and ``inventory.updated``.

        Raises:
            ValidationFailed: ``duplicate_sku`` (a live product has the SKU), an unknown
                category, or a currency other than the connection's.
        """
        if body.currency and body.currency != self.currency:
            raise field_error(("body", "currency"), f"this connection sells in {self.currency}", "currency_mismatch")
        components = E.components_from(body.taxes, body.tax_rate)
        tax_rate, taxes = self._taxes(components)
        threshold = E.to_milli(Decimal(body.low_stock_threshold)) if body.low_stock_threshold else self.default_threshold_milli
        async with self.db.transaction(self.context.tenant_id) as uow:
            await self._lock_connection(uow)
            await self._check_sku(uow.conn, body.sku, None)
            await self._check_categories(uow.conn, body.category_ids)
            product_id = new_id("product")
            record = await self._upsert(
                uow,
                "products",
                product_id,
                {
                    "sku": body.sku,
                    "barcode": body.barcode,
                    "name": body.name,
                    "description": body.description,
                    "translations": body.translations,
                    "category_ids": list(body.category_ids),
                    "price": self._money(body.price),
                    "cost": None if body.cost is None else self._money(body.cost),
                    "currency": self.currency,
                    "tax_rate": tax_rate,
                    "tax_inclusive": body.tax_inclusive,
                    "taxes": taxes,
                    "unit": body.unit,
                    "track_inventory": body.track_inventory,
                    "active": body.active,
                    "variants": self._variants(body.variants, []),
                },
            )
            locations = [loc["id"] for loc in await self._live(uow.conn, "locations")]
            await self._create_levels(uow, record, locations, threshold)
            return record

    async def update_product(self, product_id: str, body: Any) -> dict[str, Any]:
        """Change the fields given (``ProductUpdate``); ``variants`` replaces the list (an entry
        with ``id`` keeps that variant, one without gets a new id).

        Taxes: ``taxes`` replaces the components; else ``tax_rate`` alone replaces them with one
        "Tax" component. Turning ``track_inventory`` on, or adding variants, creates the missing
        stock levels. Emits ``product.updated`` only when something changed.

        Raises:
            NotFound: no live product ``product_id`` on this connection.
            ValidationFailed: ``duplicate_sku``, unknown category or variant id.
        """
        given = body.model_fields_set
        async with self.db.transaction(self.context.tenant_id) as uow:
            await self._lock_connection(uow)
            current = await self._lock_record(uow, "products", product_id)
            if current is None:
                raise NotFound(f"no product {product_id!r} on this connection")
            new = self._body(current)
            for name in ("sku", "barcode", "description", "cost"):
                if name in given:
                    value = getattr(body, name)
                    new[name] = self._money(value) if name == "cost" and value is not None else value
            for name in ("name", "translations", "category_ids", "tax_inclusive", "unit", "track_inventory", "active"):
                if name in given and getattr(body, name) is not None:
                    new[name] = getattr(body, name)
            if "price" in given and body.price is not None:
                new["price"] = self._money(body.price)
            if body.taxes is not None or body.tax_rate is not None:
                new["tax_rate"], new["taxes"] = self._taxes(E.components_from(body.taxes, body.tax_rate))
            if body.variants is not None:
                new["variants"] = self._variants(body.variants, current["variants"])
            if "sku" in given:
                await self._check_sku(uow.conn, new["sku"], product_id)
            if "category_ids" in given and body.category_ids is not None:
                await self._check_categories(uow.conn, body.category_ids)
            record = await self._upsert(uow, "products", product_id, new, lock=True)
            if record.get("track_inventory"):
                threshold = await self._product_threshold(uow.conn, product_id)
                locations = [loc["id"] for loc in await self._live(uow.conn, "locations")]
                await self._create_levels(uow, record, locations, threshold)
            return record

    async def delete_product(self, product_id: str) -> dict[str, Any]:
        """Soft-delete a product (``product.deleted``); its stock levels and ledger are kept.

        Raises:
            NotFound: no product ``product_id`` on this connection.
        """
        async with self.db.transaction(self.context.tenant_id) as uow:
            record = await records.soft_delete(uow, connection_id=self.context.id, entity="products", record_id=product_id)
            if record is None:
                raise NotFound(f"no product {product_id!r} on this connection")
            return record

    async def _find_by_variant_sku(self, conn: Any, sku: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        return await records.find_variant_by_sku(conn, connection_id=self.context.id, sku=sku)

    async def _resolve_item(
        self, conn: Any, product_id: str | None, sku: str | None, variant_id: str | None, loc: Loc, *, for_sale: bool
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """(product, variant) named by ``product_id`` or ``sku`` (product or variant SKU) + ``variant_id``.

        Raises:
            ValidationFailed: unknown product/SKU, variant not of the product, variant missing
                for a product with variants, or (``for_sale``) an inactive product or variant.
        """
        variant: dict[str, Any] | None = None
        if product_id:
            product = await self._load(conn, "products", product_id)
            if product is None:
                raise field_error((*loc, "product_id"), "no such product on this connection", "unknown_product")
        else:
            product = await records.find_product_by_sku(conn, connection_id=self.context.id, sku=sku or "")
            if product is None:
                product, variant = await self._find_by_variant_sku(conn, sku or "")
            if product is None:
                raise field_error((*loc, "sku"), f"no product with SKU {sku!r}", "unknown_sku")
        if variant_id:
            match = [v for v in product.get("variants") or [] if v["id"] == variant_id]
            if not match or (variant is not None and variant["id"] != variant_id):
                raise field_error((*loc, "variant_id"), "not a variant of this product", "unknown_variant")
            variant = match[0]
        if product.get("variants") and variant is None:
            raise field_error((*loc, "variant_id"), "the product has variants: name one", "variant_required")
        if for_sale and (not product.get("active") or (variant is not None and not variant.get("active"))):
            raise field_error((*loc, "product_id"), "the product is not active", "inactive_product")
        return product, variant

    # -- customers -------------------------------------------------------------------------------
    async def create_customer(self, body: Any) -> dict[str, Any]:
        """Create a customer (``CustomerCreate``): balance ``0``, loyalty points 0, the
        connection's currency; ``credit_limit`` null means no account (no ``credit`` tender).

        Raises:
            ValidationFailed: a currency other than the connection's.
        """
        if body.currency and body.currency != self.currency:
            raise field_error(("body", "currency"), f"this connection works in {self.currency}", "currency_mismatch")
        async with self.db.transaction(self.context.tenant_id) as uow:
            customer_id = new_id("customer")
            return await self._upsert(
                uow,
                "customers",
                customer_id,
                {
                    "name": body.name,
                    "email": body.email,
                    "phone": body.phone,
                    "address": _dump(body.address),
                    "credit_limit": None if body.credit_limit is None else self._money(body.credit_limit),
                    "balance": self._money(Decimal(0)),
                    "loyalty_points": 0,
                    "currency": self.currency,
                },
            )

    async def update_customer(self, customer_id: str, body: Any) -> dict[str, Any]:
        """Change the fields given (``CustomerUpdate``); an explicit null clears email, phone,
        address or credit_limit. Lowering the limit below the balance is allowed (it only
        blocks further credit sales).

        Raises:
            NotFound: no live customer ``customer_id`` on this connection.
        """
        given = body.model_fields_set
        async with self.db.transaction(self.context.tenant_id) as uow:
            current = await self._lock_record(uow, "customers", customer_id)
            if current is None:
                raise NotFound(f"no customer {customer_id!r} on this connection")
            new = self._body(current)
            if "name" in given and body.name is not None:
                new["name"] = body.name
            for name in ("email", "phone"):
                if name in given:
                    new[name] = getattr(body, name)
            if "address" in given:
                new["address"] = _dump(body.address)
            if "credit_limit" in given:
                new["credit_limit"] = None if body.credit_limit is None else self._money(body.credit_limit)
            return await self._upsert(uow, "customers", customer_id, new)

    async def _change_customer(self, uow: UnitOfWork, customer: dict[str, Any], balance_delta: Decimal, points_delta: int) -> None:
        if balance_delta == 0 and points_delta == 0:
            return
        new = self._body(customer)
        new["balance"] = self._money(Decimal(new["balance"]) + balance_delta)
        new["loyalty_points"] = max(int(new["loyalty_points"]) + points_delta, 0)
        await self._upsert(uow, "customers", customer["id"], new)

    # -- orders ----------------------------------------------------------------------------------
    async def _default_location(self, conn: Any) -> dict[str, Any] | None:
        locations = await self._live(conn, "locations")
        return locations[0] if locations else None

    async def _next_number(self, conn: Any) -> str:
        """The next receipt number (``R000001``, ...) from the connection's counter row.

        The counter row stays locked until commit, so numbers are gap-free per connection on
        PostgreSQL too. Client-given numbers are not checked against it.
        """
        counter = t.receipt_counters
        row = (
            await conn.execute(
                update(counter)
                .where(counter.c.connection_id == self.context.id)
                .values(last_number=counter.c.last_number + 1)
                .returning(counter.c.last_number)
            )
        ).first()
        if row is None:  # a connection whose counter was never created: start it
            await conn.execute(insert(counter).values(connection_id=self.context.id, last_number=1))
            return "R000001"
        return f"R{row[0]:06d}"

    async def create_order(self, body: Any) -> dict[str, Any]:
        """Record a sale (``OrderCreate``) in one transaction: the order, stock, customer, events.

        Lines: by ``product_id`` or ``sku`` (+ ``variant_id``); ``unit_price`` omitted = variant
        price, else product price; ``discount`` = money off the line; taxes from the product's
        components, added (exclusive) or extracted (inclusive). Totals as documented on
        :class:`gateway.model.Order`. Tenders: cash overpayment becomes ``change_due``;
        ``credit`` charges the customer's account. ``status`` is ``completed`` when paid in full,
        else ``open``. ``number`` defaults to the next ``R000001``-style receipt number.
        Tracked lines take stock atomically (movement reason ``sale``). Loyalty points
        ``floor(amount_paid) × loyalty_points_per_unit`` go to the customer.

        Events: ``order.created``; ``inventory.updated`` per stock level; ``inventory.low`` on a
        threshold crossing; ``customer.updated`` when balance or points change.

        Raises:
            ValidationFailed: unknown location/customer/product/SKU/variant, currency mismatch,
                discount above the line, ``overpaid`` (non-cash over the total), ``credit``
                without an account (``no_credit_account``) or above it (``credit_limit_exceeded``).
            Conflict: ``insufficient_stock`` (nothing is written).
        """
        currency = self.currency
        if body.currency and body.currency != currency:
            raise field_error(("body", "currency"), f"this connection sells in {currency}", "currency_mismatch")
        async with self.db.transaction(self.context.tenant_id) as uow:
            conn = uow.conn
            if body.location_id:
                location = await self._load(conn, "locations", body.location_id)
                if location is None:
                    raise field_error(("body", "location_id"), "no such location on this connection", "unknown_location")
            else:
                location = await self._default_location(conn)
                if location is None:
                    raise field_error(("body", "location_id"), "the connection has no location", "unknown_location")
            if body.customer_id and await self._load(conn, "customers", body.customer_id) is None:
                raise field_error(("body", "customer_id"), "no such customer on this connection", "unknown_customer")

            lines: list[dict[str, Any]] = []
            needs: dict[tuple[str, str], int] = defaultdict(int)
            subtotal = discount_total = tax_total = total = Decimal(0)
            for index, item in enumerate(body.lines):
                loc = ("body", "lines", index)
                product, variant = await self._resolve_item(
                    conn, item.product_id, item.sku, item.variant_id, loc, for_sale=True
                )
                if item.unit_price is not None:
                    unit_price = item.unit_price
                elif variant is not None and variant.get("price") is not None:
                    unit_price = Decimal(variant["price"])
                else:
                    unit_price = Decimal(product["price"])
                components = E.components_from(product.get("taxes") or [], None)
                try:
                    amounts = E.line_amounts(
                        item.quantity, unit_price, item.discount, components,
                        inclusive=bool(product.get("tax_inclusive")), currency=currency,
                    )
                except E.AmountOutOfRange as exc:
                    raise field_error(loc, str(exc), "amount_out_of_range") from None
                except ValueError:
                    raise field_error((*loc, "discount"), "the discount exceeds quantity × unit_price", "discount_too_large") from None
                name = product["name"] if variant is None else f"{product['name']} / {variant['name']}"
                lines.append(
                    {
                        "id": new_id("order_line"),
                        "product_id": product["id"],
                        "variant_id": variant["id"] if variant else None,
                        "sku": (variant or {}).get("sku") or product.get("sku"),
                        "name": name,
                        "quantity": E.qty_norm(item.quantity),
                        "unit_price": self._money(unit_price),
                        "discount": self._money(amounts.discount),
                        "taxes": [
                            {"name": c.name, "rate": E.rate_str(c.rate), "amount": self._money(a), "compound": c.compound}
                            for c, a in amounts.taxes
                        ],
                        "total": self._money(amounts.total),
                    }
                )
                subtotal += amounts.gross_before_discount
                discount_total += amounts.discount
                tax_total += amounts.tax_total
                total += amounts.total
                if product.get("track_inventory"):
                    needs[(product["id"], variant["id"] if variant else "")] += E.to_milli(item.quantity)

            if subtotal >= E.MAX_AMOUNT or total >= E.MAX_AMOUNT or any(m >= E.MAX_AMOUNT * E.MILLI for m in needs.values()):
                raise field_error(("body", "lines"), "the order's totals or quantities are out of range "
                               "(at most 15 integer digits)", "amount_out_of_range")
            settlement = E.settle(total, [(p.method, p.amount) for p in body.payments], currency)
            points = E.loyalty_points(settlement.amount_paid, self.points_per_unit) if body.customer_id else 0
            # 422s before 409s: check the credit tender on an unlocked read first; it is checked
            # again under the customer's row lock once stock is taken (lock order: stock, customer).
            if settlement.credit > 0:
                self._check_credit(body, await self._load(conn, "customers", body.customer_id), settlement.credit)

            # Stock: conditional updates in level-id order (no read-then-write, no deadlock).
            levels = []
            for (product_id, variant_id), milli in needs.items():
                level = await self._level(conn, product_id, variant_id, location["id"])
                if level is None:
                    raise field_error(("body", "lines"), f"product {product_id} has no stock level at this location", "no_stock_level")
                levels.append((level, milli))
            levels.sort(key=lambda pair: pair[0].id)
            applied = []
            for level, milli in levels:
                row = await self._apply_delta(uow, level.id, -milli, guard=True)
                if row is None:
                    raise Conflict(
                        f"not enough stock of product {level.product_id} at location {level.location_id}",
                        code="insufficient_stock",
                        product_id=level.product_id,
                        variant_id=level.variant_id or None,
                        location_id=level.location_id,
                        requested=E.qty_str(milli),
                    )
                applied.append((level, milli, row))

            customer = None
            if body.customer_id:
                customer = await self._lock_record(uow, "customers", body.customer_id)
                if customer is None:
                    raise field_error(("body", "customer_id"), "no such customer on this connection", "unknown_customer")
            if settlement.credit > 0:
                self._check_credit(body, customer, settlement.credit)

            number = body.number or await self._next_number(conn)
            order_id = new_id("order")
            order = await self._upsert(
                uow,
                "orders",
                order_id,
                {
                    "number": number,
                    "status": "completed" if settlement.payment_status == "paid" else "open",
                    "payment_status": settlement.payment_status,
                    "customer_id": body.customer_id,
                    "location_id": location["id"],
                    "currency": currency,
                    "lines": lines,
                    "subtotal": self._money(subtotal),
                    "discount_total": self._money(discount_total),
                    "tax_total": self._money(tax_total),
                    "total": self._money(total),
                    "payments": [
                        {"method": p.method, "amount": self._money(E.quantize_money(p.amount, currency)), "reference": p.reference}
                        for p in body.payments
                    ],
                    "amount_paid": self._money(settlement.amount_paid),
                    "change_due": self._money(settlement.change_due),
                    "refunds": [],
                    "refunded_total": self._money(Decimal(0)),
                    "source": "api",
                },
                created_at=_utc(body.placed_at),
            )
            for level, milli, row in applied:
                await self._movement(uow, level, -milli, row.on_hand_milli, "sale", reference=number, order_id=order_id)
                await self._write_inventory(uow, level, row.on_hand_milli, row.low_stock_threshold_milli)
            if customer is not None:
                await self._change_customer(uow, customer, settlement.credit, points)
            return order

    @staticmethod
    def _check_credit(body: Any, customer: dict[str, Any] | None, credit: Decimal) -> None:
        """Raise a 422 unless ``customer`` has an account with room for ``credit``."""
        credit_index = next(i for i, p in enumerate(body.payments) if p.method == "credit")
        if customer is None or customer.get("credit_limit") is None:
            raise field_error(
                ("body", "payments", credit_index, "method"),
                "the credit tender needs a customer with a credit limit", "no_credit_account",
                code="no_credit_account",
            )
        if Decimal(customer["balance"]) + credit > Decimal(customer["credit_limit"]):
            raise field_error(
                ("body", "payments", credit_index, "amount"),
                f"balance {customer['balance']} + {credit} exceeds the credit limit {customer['credit_limit']}",
                "credit_limit_exceeded", code="credit_limit_exceeded",
            )

    async def _sale_levels(self, conn: Any, order_id: str) -> dict[tuple[str, str], tuple[Any, int]]:
        """(product_id, variant_id) → (stock level, thousandths sold) from the order's sale movements."""
        rows = (
            await conn.execute(
                select(t.stock_movements.c.product_id, t.stock_movements.c.variant_id, t.stock_movements.c.location_id,
                       func.sum(t.stock_movements.c.delta_milli).label("delta"))
                .where(
                    t.stock_movements.c.connection_id == self.context.id,
                    t.stock_movements.c.order_id == order_id,
                    t.stock_movements.c.reason == "sale",
                )
                .group_by(t.stock_movements.c.product_id, t.stock_movements.c.variant_id, t.stock_movements.c.location_id)
            )
        ).all()
        out = {}
        for row in rows:
            level = await self._level(conn, row.product_id, row.variant_id, row.location_id)
            if level is not None:
                out[(row.product_id, row.variant_id)] = (level, -int(row.delta))
        return out

    async def _restock(
        self, uow: UnitOfWork, items: dict[Any, tuple[Any, int]], reason: str, reference: str, order_id: str
    ) -> None:
        for level, milli in sorted(items.values(), key=lambda pair: pair[0].id):
            if milli <= 0:
                continue
            row = await self._apply_delta(uow, level.id, milli, guard=False)
            await self._movement(uow, level, milli, row.on_hand_milli, reason, reference=reference, order_id=order_id)
            await self._write_inventory(uow, level, row.on_hand_milli, row.low_stock_threshold_milli)

    async def refund_order(self, order_id: str, body: Any) -> dict[str, Any]:
        """Refund part or all of an order (``RefundCreate``); returns the updated Order.

        Per line: amount = round(line total × qty / line qty); the refund completing a line takes
        the exact remainder, so refunds sum to the line total. ``lines`` omitted refunds all that
        is left. ``restock`` puts tracked goods back (movement ``return``). Status becomes
        ``refunded`` when every line is fully refunded, else ``partially_refunded``. A credit
        tender is reversed in proportion: the customer's balance goes down by
        ``credit × refunded_total / total`` (cumulative, so a full refund reverses it exactly).
        Emits ``order.refunded`` (+ inventory/customer events).

        Raises:
            NotFound: no such order. Conflict: ``order_not_refundable`` (voided, already
            refunded). ValidationFailed: unknown ``line_id`` or quantity above what is refundable.
        """
        currency = self.currency
        async with self.db.transaction(self.context.tenant_id) as uow:
            order = await self._lock_record(uow, "orders", order_id)
            if order is None:
                raise NotFound(f"no order {order_id!r} on this connection")
            if order["status"] in ("voided", "refunded"):
                raise Conflict(f"order {order_id} is {order['status']}", code="order_not_refundable")
            line_milli = {line["id"]: E.to_milli(Decimal(line["quantity"])) for line in order["lines"]}
            done_milli: dict[str, int] = defaultdict(int)
            done_amount: dict[str, Decimal] = defaultdict(Decimal)
            for refund in order["refunds"]:
                for rl in refund["lines"]:
                    done_milli[rl["line_id"]] += E.to_milli(Decimal(rl["quantity"]))
                    done_amount[rl["line_id"]] += Decimal(rl["amount"])
            requested: dict[str, int] = defaultdict(int)
            if body.lines is None:
                for line_id, milli in line_milli.items():
                    if milli - done_milli[line_id] > 0:
                        requested[line_id] = milli - done_milli[line_id]
                if not requested:
                    raise Conflict(f"order {order_id} has nothing left to refund", code="order_not_refundable")
            else:
                for index, rl in enumerate(body.lines):
                    if rl.line_id not in line_milli:
                        raise field_error(("body", "lines", index, "line_id"), "not a line of this order", "unknown_line")
                    requested[rl.line_id] += E.to_milli(rl.quantity)
                    if done_milli[rl.line_id] + requested[rl.line_id] > line_milli[rl.line_id]:
                        left = line_milli[rl.line_id] - done_milli[rl.line_id]
                        raise field_error(
                            ("body", "lines", index, "quantity"),
                            f"at most {E.qty_str(left)} of this line can still be refunded",
                            "refund_exceeds_remaining", code="refund_exceeds_remaining",
                        )
            refund_id = new_id("refund")
            refund_lines = []
            refund_amount = Decimal(0)
            restock: dict[tuple[str, str], int] = defaultdict(int)
            for line in order["lines"]:
                milli = requested.get(line["id"])
                if not milli:
                    continue
                amount = E.refund_line_amount(
                    Decimal(line["total"]), line_milli[line["id"]], milli, done_milli[line["id"]], done_amount[line["id"]], currency
                )
                refund_lines.append({"line_id": line["id"], "quantity": E.qty_str(milli), "amount": self._money(amount)})
                refund_amount += amount
                done_milli[line["id"]] += milli
                if line.get("product_id"):
                    restock[(line["product_id"], line.get("variant_id") or "")] += milli
            old_refunded = Decimal(order["refunded_total"])
            new_refunded = old_refunded + refund_amount
            created = _utc(body.refunded_at) or jsonutil.utcnow()
            new = self._body(order)
            new["refunds"] = [
                *order["refunds"],
                {
                    "id": refund_id,
                    "created_at": jsonutil.rfc3339(created),
                    "reason": body.reason,
                    "restock": body.restock,
                    "lines": refund_lines,
                    "amount": self._money(refund_amount),
                },
            ]
            new["refunded_total"] = self._money(new_refunded)
            fully = all(done_milli[line_id] >= milli for line_id, milli in line_milli.items())
            new["status"] = "refunded" if fully else "partially_refunded"
            record = await self._upsert(uow, "orders", order_id, new, event_type="order.refunded")
            if body.restock:
                sold = await self._sale_levels(uow.conn, order_id)
                items = {key: (sold[key][0], min(milli, sold[key][1])) for key, milli in restock.items() if key in sold}
                await self._restock(uow, items, "return", refund_id, order_id)
            credit = sum((Decimal(p["amount"]) for p in order["payments"] if p["method"] == "credit"), Decimal(0))
            if credit > 0 and order.get("customer_id"):
                order_total = Decimal(order["total"])
                reverse = E.proportional_share(new_refunded, order_total, credit, currency) - E.proportional_share(
                    old_refunded, order_total, credit, currency
                )
                customer = await self._lock_record(uow, "customers", order["customer_id"])
                if customer is not None and reverse:
                    await self._change_customer(uow, customer, -reverse, 0)
            return record

    async def void_order(self, order_id: str, body: Any) -> dict[str, Any]:
        """Void an order with no refunds (status ``completed`` or ``open``); returns the Order.

        Every tracked line is restocked (movement reason ``restock``, reference ``void``), the
        credit tender is taken off the customer's balance and the loyalty points the sale earned
        (recomputed with the current setting, never below 0) are taken back. Emits ``order.voided``.

        Raises:
            NotFound: no such order. Conflict: ``order_not_voidable``.
        """
        async with self.db.transaction(self.context.tenant_id) as uow:
            order = await self._lock_record(uow, "orders", order_id)
            if order is None:
                raise NotFound(f"no order {order_id!r} on this connection")
            if order["status"] not in ("completed", "open") or order["refunds"]:
                raise Conflict(f"order {order_id} is {order['status']} and cannot be voided", code="order_not_voidable")
            new = self._body(order)
            new["status"] = "voided"
            record = await self._upsert(uow, "orders", order_id, new, event_type="order.voided")
            sold = await self._sale_levels(uow.conn, order_id)
            reason = getattr(body, "reason", None) if body is not None else None
            await self._restock(uow, sold, "restock", f"void: {reason}" if reason else "void", order_id)
            if order.get("customer_id"):
                credit = sum((Decimal(p["amount"]) for p in order["payments"] if p["method"] == "credit"), Decimal(0))
                points = E.loyalty_points(Decimal(order["amount_paid"]), self.points_per_unit)
                customer = await self._lock_record(uow, "customers", order["customer_id"])
                if customer is not None:
                    await self._change_customer(uow, customer, -credit, -points)
            return record

    # -- inventory -------------------------------------------------------------------------------
    async def create_adjustment(self, body: Any) -> dict[str, Any]:
        """Apply a stock delta now (``AdjustmentCreate``) and return the Adjustment (status
        ``applied``, attempts 1).

        Writes an ``adjustments`` row and a movement with the adjustment's reason and reference;
        emits ``adjustment.applied``, then the level it leads to (``inventory.updated``, +
        ``inventory.low``).

        Raises:
            ValidationFailed: unknown product/SKU/variant/location, product not tracked.
            Conflict: ``insufficient_stock`` for a negative delta past zero (unless allowed).
        """
        async with self.db.transaction(self.context.tenant_id) as uow:
            conn = uow.conn
            product, variant = await self._resolve_item(conn, body.product_id, body.sku, body.variant_id, ("body",), for_sale=False)
            if await self._load(conn, "locations", body.location_id) is None:
                raise field_error(("body", "location_id"), "no such location on this connection", "unknown_location")
            level = await self._tracked_level(conn, product, variant, body.location_id)
            delta = E.to_milli(body.delta)
            row = await self._apply_delta(uow, level.id, delta, guard=True)
            if row is None:
                raise Conflict(
                    f"not enough stock of product {product['id']} at location {body.location_id}",
                    code="insufficient_stock", product_id=product["id"], location_id=body.location_id,
                )
            now = jsonutil.utcnow()
            adjustment_id = new_id("adjustment")
            values = {
                "id": adjustment_id, "tenant_id": self.context.tenant_id, "connection_id": self.context.id,
                "product_id": product["id"], "variant_id": variant["id"] if variant else None,
                "location_id": body.location_id, "delta_milli": delta, "reason": body.reason, "reference": body.reference,
                "status": "applied", "attempts": 1, "last_error": None, "applied_at": now, "created_at": now, "updated_at": now,
            }
            await conn.execute(insert(t.adjustments).values(**values))
            await self._movement(uow, level, delta, row.on_hand_milli, body.reason, reference=body.reference, adjustment_id=adjustment_id)
            adjustment = render_adjustment(_Row(values))
            uow.emit("adjustment.applied", self.context.id, adjustment, ["status", "applied_at"])  # before its level
            await self._write_inventory(uow, level, row.on_hand_milli, row.low_stock_threshold_milli)
            return adjustment

    async def push_adjustment(self, adjustment_id: str, *, final: bool = False) -> dict[str, Any]:
        """Apply a ``pending`` adjustment queued for this engine (an inventory link's: consumer
        adjustments are applied at once by :meth:`create_adjustment`), in one transaction: the
        delta, its movement, the inventory record and the verdict commit together, so a repeated
        push (a duplicate job) finds it settled and applies nothing.

        Verdicts: ``applied`` (``adjustment.applied``, ``inventory.updated``); ``failed`` when
        the product has no stock level at the location any more (``no_stock_level``) or a
        negative delta would take on hand below zero (``insufficient_stock``, unless
        ``allow_negative_stock``).

        Raises:
            NotFound: no such adjustment on this connection.
        """
        async with self.db.transaction(self.context.tenant_id) as uow:
            claimed = await uow.conn.execute(update(t.adjustments).where(  # locks the row: one push at a time
                t.adjustments.c.id == adjustment_id, t.adjustments.c.connection_id == self.context.id,
                t.adjustments.c.status == "pending").values(updated_at=jsonutil.utcnow()))
            row = await adjustments.load(uow.conn, self.context.id, adjustment_id)
            if not claimed.rowcount:
                return render_adjustment(row)
            level = await self._level(uow.conn, row["product_id"], row["variant_id"], row["location_id"])
            if level is None:
                return await adjustments.settle(uow, adjustment_id, "failed", last_error=(
                    f"no_stock_level: product {row['product_id']} has no stock level at location {row['location_id']}"))
            after = await self._apply_delta(uow, level.id, row["delta_milli"], guard=True)
            if after is None:
                return await adjustments.settle(uow, adjustment_id, "failed", last_error=(
                    f"insufficient_stock: not enough stock of product {row['product_id']} at location "
                    f"{row['location_id']} for a delta of {adjustments.milli_to_str(row['delta_milli'])}"))
            await self._movement(uow, level, row["delta_milli"], after.on_hand_milli, row["reason"],
                                 reference=row["reference"], adjustment_id=adjustment_id)
            settled = await adjustments.settle(uow, adjustment_id, "applied")  # before the level event it leads to
            inventory_links.landed(uow, row, inventory_remote_id(level.product_id, level.variant_id, level.location_id))
            await self._write_inventory(uow, level, after.on_hand_milli, after.low_stock_threshold_milli)
            return settled

    async def _tracked_level(self, conn: Any, product: dict[str, Any], variant: dict[str, Any] | None, location_id: str) -> Any:
        if not product.get("track_inventory"):
            raise field_error(("body", "product_id"), "the product does not track inventory", "not_tracked", code="not_tracked")
        level = await self._level(conn, product["id"], variant["id"] if variant else "", location_id)
        if level is None:
            raise field_error(("body", "location_id"), "no stock level for this product here", "no_stock_level")
        return level

    async def set_inventory_count(self, product_id: str, location_id: str, body: Any) -> dict[str, Any]:
        """Set on hand absolutely (``CountSet``) with compare-and-set; returns the InventoryLevel.

        With ``expected_on_hand`` the update happens only if on hand still equals it (one
        conditional UPDATE); without it the count is set unconditionally (row locked). A
        change writes a movement (reason ``count``/``correction``) and ``inventory.updated``;
        setting the same value writes nothing and emits nothing.

        Raises:
            NotFound: unknown product or location (path ids).
            ValidationFailed: variant not of the product / missing, product not tracked.
            Conflict: ``stale_count`` with the current ``on_hand`` when the expectation is stale.
        """
        async with self.db.transaction(self.context.tenant_id) as uow:
            conn = uow.conn
            product = await self._load(conn, "products", product_id)
            if product is None:
                raise NotFound(f"no product {product_id!r} on this connection")
            if await self._load(conn, "locations", location_id) is None:
                raise NotFound(f"no location {location_id!r} on this connection")
            _, variant = await self._resolve_item(conn, product_id, None, body.variant_id, ("body",), for_sale=False)
            level = await self._tracked_level(conn, product, variant, location_id)
            new_milli = E.to_milli(body.on_hand)
            if body.expected_on_hand is not None:
                before = E.to_milli(body.expected_on_hand)
                row = (
                    await conn.execute(
                        update(t.stock_levels)
                        .where(t.stock_levels.c.id == level.id, t.stock_levels.c.on_hand_milli == before)
                        .values(on_hand_milli=new_milli, updated_at=jsonutil.utcnow())
                        .returning(t.stock_levels.c.on_hand_milli, t.stock_levels.c.low_stock_threshold_milli)
                    )
                ).first()
                if row is None:
                    current = (
                        await conn.execute(select(t.stock_levels.c.on_hand_milli).where(t.stock_levels.c.id == level.id))
                    ).scalar_one()
                    raise Conflict(
                        f"on hand is {E.qty_str(current)}, not the expected {E.qty_str(before)}",
                        code="stale_count", on_hand=E.qty_str(current),
                    )
            else:
                locked = (
                    await conn.execute(select(t.stock_levels).where(t.stock_levels.c.id == level.id).with_for_update())
                ).first()
                before = locked.on_hand_milli
                row = (
                    await conn.execute(
                        update(t.stock_levels)
                        .where(t.stock_levels.c.id == level.id)
                        .values(on_hand_milli=new_milli, updated_at=jsonutil.utcnow())
                        .returning(t.stock_levels.c.on_hand_milli, t.stock_levels.c.low_stock_threshold_milli)
                    )
                ).first()
            if new_milli != before:
                await self._movement(uow, level, new_milli - before, new_milli, body.reason)
            return await self._write_inventory(uow, level, new_milli, row.low_stock_threshold_milli)


class _Row:
    """Attribute access over a dict, standing in for a ``stock_levels`` row just inserted."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _dump(model: Any) -> Any:
    return None if model is None else model.model_dump(mode="json")
