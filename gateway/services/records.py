"""The records cache: unified objects of every connection, with their change events.

Writes go through :func:`upsert` and :func:`soft_delete` inside a :class:`UnitOfWork`, so the
row and its event commit together (outbox). An upsert whose entity fields hash the same as the
stored version writes nothing and emits nothing; an upsert carrying an older vendor
``remote_updated_at`` than the stored one is ignored, so a late poll cannot overwrite a newer
webhook-delivered version. An update the write journal predicts (the POS reporting the
gateway's own write back, :mod:`gateway.services.journal`) is written without an event.

Inventory levels carry two more rules, here so that every writer (sync, webhooks, pushes'
read-backs, the local engine) follows them alike:

- **Low stock** (:func:`is_low`): an update that takes a level's ``available`` from above its
  ``low_stock_threshold`` to at or below it also emits ``inventory.low`` (data: the level after
  the change), once per crossing: not again while it stays low, again after it went back above.
  Echoes included (the gateway's own adjustment can cross the threshold); a new level and a
  level without a threshold never emit it.
- **Drift** (``upsert_many(..., reconcile=True)``, the reconciliation count): an update that
  changes a level's ``on_hand`` emits ``inventory.drift`` instead of ``inventory.updated``, with
  ``previous_on_hand`` and ``difference`` added to the data; never for an echo or for a level
  with open write-journal entries (the gateway's own write in flight: a plain update then).

Reads return the stored JSON text (``bytes``), ready to send. Lists are keyset-paginated by
(``updated_at``, ``id``); the cursor is opaque base64url JSON. An order's receipt
(:func:`order_receipt`) is the one document a cached record has that only the vendor holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import and_, bindparam, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import jsonutil
from gateway.errors import BadRequest, NotFound, VendorError
from gateway.ids import new_id
from gateway.services import inventory_links, journal
from gateway.storage import tables as t
from gateway.storage.reader import FastReader, as_bytes, as_text
from gateway.storage.uow import UnitOfWork

if TYPE_CHECKING:  # the connector SDK builds on this module; only the type is needed here
    from gateway.sdk.connector import Connector

ENTITIES = ("products", "categories", "locations", "customers", "orders", "inventory")
ID_KINDS = {
    "products": "product",
    "categories": "category",
    "locations": "location",
    "customers": "customer",
    "orders": "order",
    "inventory": "inventory",
}
EVENT_NOUN = {
    "products": "product",
    "categories": "category",
    "locations": "location",
    "customers": "customer",
    "orders": "order",
    "inventory": "inventory",
}
COMMON_FIELDS = ("id", "connection_id", "remote_id", "created_at", "updated_at", "deleted_at")

#: Filters a list accepts per entity: query parameter -> field of the unified object.
FILTERS: dict[str, tuple[str, ...]] = {
    "products": ("sku", "barcode", "active"),
    "categories": ("parent_id",),
    "locations": ("kind",),
    "customers": ("email", "phone"),
    "orders": ("status", "customer_id", "location_id", "number"),
    "inventory": ("product_id", "variant_id", "location_id"),
}


class UpsertResult:
    """What an upsert did: ``action`` is ``created``, ``updated``, ``unchanged`` or ``stale``.

    ``record`` (the stored unified object) is decoded on first use: a sync that finds 100,000
    records unchanged never parses them. ``echo``: an update the write journal recognised as the
    POS reporting the gateway's own write back (:mod:`gateway.services.journal`): written, no event.
    """

    __slots__ = ("_data", "_record", "action", "changed", "echo")

    def __init__(self, action: str, record: dict[str, Any] | None = None, changed: list[str] | None = None,
                 *, data: str | None = None, echo: bool = False) -> None:
        self.action = action
        self.changed = changed or []
        self._record = record
        self._data = data
        self.echo = echo

    @property
    def record(self) -> dict[str, Any]:
        if self._record is None:
            self._record = jsonutil.loads(self._data or "{}")
        return self._record

    @property
    def id(self) -> str:
        return self.record["id"]


@dataclass
class UpsertItem:
    """One record for :func:`upsert_many` (the arguments of :func:`upsert` but ``connection_id``/``entity``)."""

    remote_id: str
    body: dict[str, Any]
    raw: Any = None
    remote_updated_at: datetime | None = None
    created_at: datetime | None = None
    record_id: str | None = None
    event_type: str | None = None


# Statements of the sync's hot path, built once (building SQLAlchemy expressions per page costs
# more than running them).
_SELECT_BY_REMOTE_IDS = select(t.records).where(
    t.records.c.connection_id == bindparam("b_connection"),
    t.records.c.entity == bindparam("b_entity"),
    t.records.c.remote_id.in_(bindparam("b_remote_ids", expanding=True)),
)
#: Locks the rows in id order, so two batches locking overlapping rows cannot deadlock.
_SELECT_FOR_UPDATE = _SELECT_BY_REMOTE_IDS.order_by(t.records.c.id).with_for_update()
_INSERT = insert(t.records)
_UPDATE = update(t.records).where(t.records.c.id == bindparam("b_id")).values(
    data=bindparam("b_data"), raw=bindparam("b_raw"), sku=bindparam("b_sku"), content_hash=bindparam("b_hash"),
    remote_updated_at=bindparam("b_remote_updated_at"), updated_at=bindparam("b_now"), deleted_at=None,
)
_UPDATE_RAW = update(t.records).where(t.records.c.id == bindparam("b_id")).values(raw=bindparam("b_raw"))


def content_hash(body: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of an object's entity fields."""
    return hashlib.sha256(jsonutil.dumps_sorted(body)).hexdigest()


def render(common: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """The unified object: common fields first, then the entity's fields."""
    out = {key: common.get(key) for key in COMMON_FIELDS}
    out.update(body)
    return out


def _body_of(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key not in COMMON_FIELDS and key != "raw"}


def _older(item: UpsertItem, existing: dict[str, Any]) -> bool:
    """Whether ``item`` is an older vendor version than the stored row (it is then ignored)."""
    return (item.remote_updated_at is not None and existing["remote_updated_at"] is not None
            and item.remote_updated_at < existing["remote_updated_at"])


def _quantity(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def is_low(level: dict[str, Any]) -> bool:
    """Whether an inventory level (entity fields; quantities as decimal strings or ``Decimal``)
    is at or below its ``low_stock_threshold``: ``available <= low_stock_threshold``. A level
    without a threshold (or without ``available``) is never low."""
    threshold, available = _quantity(level.get("low_stock_threshold")), _quantity(level.get("available"))
    return threshold is not None and available is not None and available <= threshold


def _drift(record: dict[str, Any], old_body: dict[str, Any]) -> dict[str, Any] | None:
    """The ``inventory.drift`` data of a level whose ``on_hand`` the count changed (``None`` when
    it did not): the level as counted plus ``previous_on_hand`` and ``difference`` (counted minus
    cached), decimal strings."""
    before, after = _quantity(old_body.get("on_hand")), _quantity(record.get("on_hand"))
    if before is None or after is None or before == after:
        return None
    return {**record, "previous_on_hand": old_body.get("on_hand"), "difference": format(after - before, "f")}


def _event_type(entity: str, action: str, override: str | None) -> str:
    if override:
        return override
    if entity == "inventory":
        return "inventory.updated"
    return f"{EVENT_NOUN[entity]}.{action}"


async def upsert(
    uow: UnitOfWork,
    *,
    connection_id: str,
    entity: str,
    remote_id: str,
    body: dict[str, Any],
    raw: Any = None,
    remote_updated_at: datetime | None = None,
    created_at: datetime | None = None,
    record_id: str | None = None,
    event_type: str | None = None,
    lock: bool = False,
) -> UpsertResult:
    """Insert or update one record and emit its event in the same transaction.

    Args:
        body: the unified object's entity fields (JSON-ready: decimals as ``Decimal`` or str).
        raw: the vendor's payload, served with ``?expand=raw``.
        remote_updated_at: the vendor's modification time; an older one than stored is ignored.
        created_at: creation time at the vendor (defaults to now for new records).
        record_id: the id to give a new record (default: a new prefixed id).
        event_type: the event type of an update (``order.refunded``); default ``<noun>.updated``. A new
            record always emits ``<noun>.created`` (a refund seen before its sale creates a refunded order).
        lock: lock the existing row (``FOR UPDATE`` on PostgreSQL) before comparing.

    Returns:
        An :class:`UpsertResult`; ``record`` is the stored unified object.
    """
    item = UpsertItem(remote_id=remote_id, body=body, raw=raw, remote_updated_at=remote_updated_at,
                      created_at=created_at, record_id=record_id, event_type=event_type)
    return (await upsert_many(uow, connection_id=connection_id, entity=entity, items=[item], lock=lock))[0]


async def upsert_many(
    uow: UnitOfWork, *, connection_id: str, entity: str, items: list[UpsertItem], lock: bool = False,
    reconcile: bool = False, journaled: bool = True,
) -> list[UpsertResult]:
    """Upsert a batch (a sync page) with one read of the stored rows and bulk writes.

    Same rules as :func:`upsert`, item by item and in order (a remote id repeated in the batch
    sees its earlier occurrence); events are emitted in the items' order. Inventory levels also
    get ``inventory.low`` on a crossing (see the module docstring).

    Args:
        reconcile: the items are the POS's full count (``SyncEngine.reconcile``): a changed
            ``on_hand`` of a cached level is reported as ``inventory.drift`` (inventory only).
        journaled: ``False`` when the items are not a report from the POS (a recompute of derived
            fields): the write journal is not consulted, so no entry is taken for their echo.
        lock: lock the stored rows (``FOR UPDATE`` on PostgreSQL, in id order) before comparing;
            always done for journaled inventory reports.
    """
    prepared = []
    for item in items:
        # Normalise to what is stored: Decimal and datetime become strings (exact), so the hash
        # and the comparison with the stored version see the same JSON types. orjson reads back
        # what jsonutil.dumps wrote; a mapped body holds no float for it to read differently.
        body = orjson.loads(jsonutil.dumps(item.body))
        prepared.append((item, body, content_hash(body)))
    stored: dict[str, dict[str, Any]] = {}
    remote_ids = list(dict.fromkeys(item.remote_id for item in items))
    # A journaled entity's echo check reads the cached row and the open journal entries: two
    # reports of one level checked at once (a push's read-back, a poll) would both judge against
    # the same cached value. PostgreSQL takes the rows' locks (SQLite has one writer anyway).
    lock = lock or (journaled and entity in journal.ENTITIES)
    query = _SELECT_FOR_UPDATE if lock and uow.dialect == "postgresql" else _SELECT_BY_REMOTE_IDS
    for start in range(0, len(remote_ids), 500):
        params = {"b_connection": connection_id, "b_entity": entity, "b_remote_ids": remote_ids[start:start + 500]}
        for row in (await uow.conn.execute(query, params)).mappings():
            stored[row["remote_id"]] = dict(row)
    echoes: dict[str, list[tuple[str | None, int]]] = {}
    in_flight: set[str] = set()
    level_changes: list[inventory_links.LevelChange] = []
    if reconcile and entity == "inventory":  # the gateway's own writes in flight are not drift
        in_flight = await journal.open_remote_ids(uow, connection_id=connection_id, entity=entity,
                                                  remote_ids=[rid for rid in remote_ids if rid in stored])
    if journaled and entity in journal.ENTITIES:  # the gateway's own writes coming back are not external changes
        echoes = await journal.absorb(uow, connection_id=connection_id, entity=entity, updates={
            item.remote_id: (_body_of(jsonutil.loads(stored[item.remote_id]["data"])), body, item.remote_updated_at)
            for item, body, digest in prepared
            if item.remote_id in stored and stored[item.remote_id]["content_hash"] != digest
            and stored[item.remote_id]["deleted_at"] is None and not _older(item, stored[item.remote_id])})
    now = jsonutil.utcnow()
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    raw_updates: list[dict[str, Any]] = []
    sku_records: dict[str, tuple[dict[str, Any], bool]] = {}
    results: list[UpsertResult] = []
    now_text = jsonutil.rfc3339(now)
    for item, body, digest in prepared:
        existing = stored.get(item.remote_id)
        raw_text = None if item.raw is None else jsonutil.dumps(item.raw).decode()
        sku = body.get("sku") if entity == "products" else None
        if existing is None:
            common = {
                "id": item.record_id or new_id(ID_KINDS[entity]),
                "connection_id": connection_id,
                "remote_id": item.remote_id,
                "created_at": now_text if item.created_at is None else jsonutil.rfc3339(item.created_at),
                "updated_at": now_text,
                "deleted_at": None,
            }
            record = render(common, body)
            data = jsonutil.dumps(record).decode()
            inserts.append({
                "id": common["id"], "tenant_id": uow.tenant_id, "connection_id": connection_id, "entity": entity,
                "remote_id": item.remote_id, "sku": sku, "data": data, "raw": raw_text, "content_hash": digest,
                "remote_updated_at": item.remote_updated_at, "created_at": item.created_at or now,
                "updated_at": now, "deleted_at": None,
            })
            stored[item.remote_id] = {**inserts[-1], "_new": True}
            if entity == "products":
                sku_records[common["id"]] = (body, True)
            changed = sorted(body)
            # a record seen for the first time is "created", whatever the change that brought it
            uow.emit(_event_type(entity, "created", None), connection_id, record, changed, encoded=data)
            results.append(UpsertResult("created", record, changed))
            continue
        if _older(item, existing):
            results.append(UpsertResult("stale", data=existing["data"]))
            continue
        if existing["content_hash"] == digest and existing["deleted_at"] is None:
            if raw_text is not None and raw_text != existing["raw"]:
                raw_updates.append({"b_id": existing["id"], "b_raw": raw_text})
                existing["raw"] = raw_text
            results.append(UpsertResult("unchanged", data=existing["data"]))
            continue
        previous = jsonutil.loads(existing["data"])
        old_body = _body_of(previous)
        changed = sorted(key for key in set(body) | set(old_body) if body.get(key) != old_body.get(key))
        if existing["deleted_at"] is not None:
            changed.append("deleted_at")
        common = {**previous, "updated_at": now_text, "deleted_at": None}
        record = render(common, body)
        data = jsonutil.dumps(record).decode()
        values = {
            "b_id": existing["id"], "b_data": data, "b_raw": raw_text if raw_text is not None else existing["raw"],
            "b_sku": sku, "b_hash": digest,
            "b_remote_updated_at": item.remote_updated_at or existing["remote_updated_at"],
        }
        updates.append(values)
        if entity == "products" and (existing["deleted_at"] is not None or {"sku", "variants"} & set(changed)):
            sku_records[existing["id"]] = (body, bool(existing.get("_new")))
        action = "created" if existing["deleted_at"] is not None else "updated"
        existing.update(data=data, raw=values["b_raw"], content_hash=digest, deleted_at=None,
                        remote_updated_at=values["b_remote_updated_at"])
        crossed = entity == "inventory" and action == "updated" and is_low(body) and not is_low(old_body)
        if entity == "inventory" and action == "updated" and body.get("on_hand") != old_body.get("on_hand"):
            level_changes.append(inventory_links.LevelChange(
                record, item.remote_id, old_body.get("on_hand"),
                echoes.get(item.remote_id)))
        if item.remote_id in echoes and action == "updated":
            echoes.pop(item.remote_id)  # one echo per entry: a repeat in the batch is a change
            if crossed:
                uow.emit("inventory.low", connection_id, record, changed, encoded=data)
            results.append(UpsertResult("updated", record, changed, echo=True))
            continue
        drift = (_drift(record, old_body) if reconcile and entity == "inventory" and action == "updated"
                 and item.remote_id not in in_flight else None)
        if drift is not None:
            uow.emit("inventory.drift", connection_id, drift, changed)
        else:
            uow.emit(_event_type(entity, action, item.event_type), connection_id, record, changed, encoded=data)
        if crossed:
            uow.emit("inventory.low", connection_id, record, changed, encoded=data)
        results.append(UpsertResult("updated", record, changed))
    if inserts:
        await uow.conn.execute(_INSERT, inserts)
    if updates:
        for values in updates:
            values["b_now"] = now
        await uow.conn.execute(_UPDATE, updates)
    if raw_updates:
        await uow.conn.execute(_UPDATE_RAW, raw_updates)
    if sku_records:
        await _index_skus(uow, connection_id, sku_records)
    if level_changes and journaled:
        await inventory_links.propagate(uow, connection_id, level_changes)
    return results


def available(on_hand: Any, safety_stock: Decimal) -> str:
    """``available`` of a level: ``max(on_hand - safety_stock, 0)`` as a canonical decimal string
    (no exponent, no trailing zeros: ``"28"``, ``"2.5"``, ``"0"``), which is how the built-in
    connectors render it for their quantities."""
    value = (_quantity(on_hand) or Decimal(0)) - safety_stock
    if value <= 0:
        return "0"
    return format(value.normalize(), "f")


async def recompute_available(uow: UnitOfWork, *, connection_id: str, safety_stock: Decimal) -> int:
    """Re-derive ``available`` of the connection's live cached inventory levels after its
    ``safety_stock`` setting changed (``PATCH /v1/connections/{id}``), in the caller's transaction.

    Each level whose ``available`` value changes is updated through :func:`upsert_many` (so it
    emits ``inventory.updated``, plus ``inventory.low`` when it crosses its threshold); the write
    journal is left alone (this is no report from the POS). Levels are read and written 500 at a
    time.

    Args:
        safety_stock: the new setting, in units.

    Returns:
        how many levels changed.
    """
    changed, after_id = 0, ""
    while True:
        rows = (await uow.conn.execute(
            select(t.records.c.id, t.records.c.remote_id, t.records.c.data).where(
                t.records.c.connection_id == connection_id, t.records.c.entity == "inventory",
                t.records.c.deleted_at.is_(None), t.records.c.id > after_id,
            ).order_by(t.records.c.id).limit(500))).all()
        if not rows:
            return changed
        after_id = rows[-1].id
        items = []
        for row in rows:
            body = _body_of(jsonutil.loads(row.data))
            new = available(body.get("on_hand"), safety_stock)
            if _quantity(body.get("available")) != Decimal(new):
                items.append(UpsertItem(remote_id=row.remote_id, body={**body, "available": new}))
        if items:
            await upsert_many(uow, connection_id=connection_id, entity="inventory", items=items, lock=True,
                              journaled=False)
            changed += len(items)


async def soft_delete(uow: UnitOfWork, *, connection_id: str, entity: str, record_id: str) -> dict[str, Any] | None:
    """Mark a record deleted and emit ``<noun>.deleted``; return the record, or ``None`` if absent.

    Deleting an already deleted record changes nothing and emits nothing.
    """
    row = (
        await uow.conn.execute(
            select(t.records.c.id, t.records.c.data, t.records.c.deleted_at).where(
                t.records.c.connection_id == connection_id, t.records.c.entity == entity, t.records.c.id == record_id
            )
        )
    ).first()
    if row is None:
        return None
    record = jsonutil.loads(row.data)
    if row.deleted_at is not None:
        return record
    now = jsonutil.utcnow()
    record["updated_at"] = record["deleted_at"] = jsonutil.rfc3339(now)
    await uow.conn.execute(
        update(t.records)
        .where(t.records.c.id == record_id)
        .values(data=jsonutil.dumps(record).decode(), updated_at=now, deleted_at=now)
    )
    if entity == "products":
        await uow.conn.execute(delete(t.sku_index).where(t.sku_index.c.record_id == record_id))
    uow.emit(f"{EVENT_NOUN[entity]}.deleted", connection_id, record, ["deleted_at"])
    return record


#: The identifiers kept in ``sku_index`` (kind -> the product and variant field), and their widest.
INDEXED_IDENTIFIERS = ("sku", "barcode")
MAX_IDENTIFIER = 64


def identifiers(body: dict[str, Any]) -> set[tuple[str, str, str]]:
    """``(kind, identifier, variant id or "")`` of a product body and its variants, for
    :data:`INDEXED_IDENTIFIERS`; identifiers wider than :data:`MAX_IDENTIFIER` are left out."""
    found: set[tuple[str, str, str]] = set()
    for kind in INDEXED_IDENTIFIERS:
        if body.get(kind):
            found.add((kind, body[kind], ""))
        found |= {(kind, v[kind], v["id"]) for v in body.get("variants") or [] if v.get(kind) and v.get("id")}
    return {item for item in found if isinstance(item[1], str) and len(item[1]) <= MAX_IDENTIFIER}


async def _index_skus(
    uow: UnitOfWork, connection_id: str, products: dict[str, tuple[dict[str, Any], bool]]
) -> None:
    """Replace the ``sku_index`` rows of products (record id → (body, is new)) with their own and
    their variants' SKUs; a new record has no rows to delete."""
    old = [record_id for record_id, (_, new) in products.items() if not new]
    for start in range(0, len(old), 500):
        await uow.conn.execute(delete(t.sku_index).where(t.sku_index.c.record_id.in_(old[start:start + 500])))
    rows = []
    for record_id, (body, _) in products.items():
        rows += [{"connection_id": connection_id, "kind": kind, "sku": value, "record_id": record_id,
                  "variant_id": variant} for kind, value, variant in sorted(identifiers(body))]
    if rows:
        await uow.conn.execute(insert(t.sku_index), rows)


async def find_variant_by_sku(
    conn: AsyncConnection, *, connection_id: str, sku: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The live product owning a *variant* with this SKU, and that variant; ``(None, None)`` when none.

    An indexed lookup through ``sku_index`` (no scan of the catalog).
    """
    row = (
        await conn.execute(
            select(t.records.c.data, t.sku_index.c.variant_id)
            .select_from(t.sku_index.join(t.records, t.records.c.id == t.sku_index.c.record_id))
            .where(
                t.sku_index.c.connection_id == connection_id,
                t.sku_index.c.kind == "sku",
                t.sku_index.c.sku == sku,
                t.sku_index.c.variant_id != "",
                t.records.c.deleted_at.is_(None),
            )
            .order_by(t.sku_index.c.record_id)
            .limit(1)
        )
    ).first()
    if row is None:
        return None, None
    product = jsonutil.loads(row.data)
    variant = next((v for v in product.get("variants") or [] if v.get("id") == row.variant_id), None)
    return (product, variant) if variant is not None else (None, None)


async def load(
    conn: AsyncConnection, *, connection_id: str, entity: str, record_id: str, include_deleted: bool = True
) -> dict[str, Any] | None:
    """Return one record as a dict (``None`` when absent)."""
    query = select(t.records.c.data).where(
        t.records.c.connection_id == connection_id, t.records.c.entity == entity, t.records.c.id == record_id
    )
    if not include_deleted:
        query = query.where(t.records.c.deleted_at.is_(None))
    row = (await conn.execute(query)).first()
    return None if row is None else jsonutil.loads(row.data)


async def load_by_remote_id(conn: AsyncConnection, *, connection_id: str, entity: str, remote_id: str) -> dict[str, Any] | None:
    """Return one record by the vendor's id (``None`` when absent)."""
    row = (
        await conn.execute(
            select(t.records.c.data).where(
                t.records.c.connection_id == connection_id,
                t.records.c.entity == entity,
                t.records.c.remote_id == remote_id,
            )
        )
    ).first()
    return None if row is None else jsonutil.loads(row.data)


async def find_product_by_sku(conn: AsyncConnection, *, connection_id: str, sku: str) -> dict[str, Any] | None:
    """Return the live product with this SKU (``None`` when none)."""
    row = (
        await conn.execute(
            select(t.records.c.data)
            .where(
                t.records.c.connection_id == connection_id,
                t.records.c.entity == "products",
                t.records.c.sku == sku,
                t.records.c.deleted_at.is_(None),
            )
            .limit(1)
        )
    ).first()
    return None if row is None else jsonutil.loads(row.data)


_SCOPE = (
    " FROM records r JOIN connections c ON c.id = r.connection_id"
    " WHERE r.connection_id = :connection_id AND r.entity = :entity"
    " AND c.tenant_id = :tenant_id AND c.deleted_at IS NULL"
)


async def get_json(
    reader: FastReader, *, tenant_id: str, connection_id: str, entity: str, record_id: str, expand_raw: bool = False
) -> bytes:
    """Return one record's JSON bytes, as stored (soft-deleted records included).

    Raises:
        NotFound: no such record on this tenant's live connection (another tenant's id included).
    """
    sql = "SELECT r.data, " + ("r.raw" if expand_raw else "NULL") + _SCOPE + " AND r.id = :record_id"
    row = await reader.one(
        sql, {"connection_id": connection_id, "entity": entity, "tenant_id": tenant_id, "record_id": record_id}
    )
    if row is None:
        raise NotFound(f"no {EVENT_NOUN[entity]} {record_id!r} on connection {connection_id!r}")
    if expand_raw:
        return _with_raw(row[0], row[1])
    return as_bytes(row[0])


def _with_raw(data: str | bytes, raw: str | bytes | None) -> bytes:
    return as_bytes(data)[:-1] + b',"raw":' + (as_bytes(raw) if raw is not None else b"null") + b"}"


def encode_cursor(updated_at: datetime, record_id: str) -> str:
    """Opaque cursor for the keyset position (updated_at, id)."""
    payload = jsonutil.dumps([updated_at.isoformat(), record_id])
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of :func:`encode_cursor`.

    Raises:
        BadRequest: ``invalid_cursor`` when the cursor was not made by this API.
    """
    try:
        payload = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, record_id = jsonutil.loads(payload)
        if not isinstance(stamp, str) or not isinstance(record_id, str):
            raise ValueError("cursor parts")
        moment = datetime.fromisoformat(stamp)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment, record_id
    except (ValueError, TypeError, binascii.Error, jsonutil.MalformedJSON) as exc:
        raise BadRequest("the cursor is not one this API returned", code="invalid_cursor") from exc


async def keyset_page(conn: AsyncConnection, table: Any, query: Any, *, limit: int,
                      cursor: str | None) -> tuple[list[Any], str | None]:
    """One page of ``query`` (a ``select`` over ``table``, which has ``created_at`` and ``id``),
    oldest first, after ``cursor``; returns the rows and the cursor of the next page (``None``:
    the last page).

    Raises:
        BadRequest: a cursor that is not one of ours.
    """
    c = table.c
    if cursor:
        after_time, after_id = decode_cursor(cursor)
        query = query.where(or_(c.created_at > after_time, and_(c.created_at == after_time, c.id > after_id)))
    rows = list((await conn.execute(query.order_by(c.created_at, c.id).limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id) if more else None


async def list_json(
    reader: FastReader,
    *,
    tenant_id: str,
    connection_id: str,
    entity: str,
    limit: int,
    cursor: str | None = None,
    updated_after: datetime | None = None,
    include_deleted: bool = False,
    filters: dict[str, str] | None = None,
    expand_raw: bool = False,
) -> tuple[list[bytes], str | None]:
    """One page of records as JSON bytes, keyset-ordered by (updated_at, id).

    Args:
        limit: page size (the API bounds it to 1..200).
        cursor: from a previous page's ``next_cursor``.
        updated_after: only records changed strictly after this time (aware UTC).
        filters: field equality filters; keys from :data:`FILTERS` for the entity.

    Returns:
        (items, next_cursor); ``next_cursor`` is ``None`` on the last page. An unknown or
        foreign connection gives an empty page (the caller tells the two apart).

    Raises:
        BadRequest: ``invalid_cursor``.
    """
    sql = ["SELECT r.id, r.updated_at, r.data, ", "r.raw" if expand_raw else "NULL", _SCOPE]
    params: dict[str, Any] = {"connection_id": connection_id, "entity": entity, "tenant_id": tenant_id,
                              "limit": limit + 1}
    if not include_deleted:
        sql.append(" AND r.deleted_at IS NULL")
    if updated_after is not None:
        sql.append(" AND r.updated_at > :updated_after")
        params["updated_after"] = reader.ts(updated_after)
    if cursor:
        after_time, after_id = decode_cursor(cursor)
        sql.append(" AND (r.updated_at > :cursor_time OR (r.updated_at = :cursor_time AND r.id > :cursor_id))")
        params["cursor_time"] = reader.ts(after_time)
        params["cursor_id"] = after_id
    for n, (field, value) in enumerate(sorted((filters or {}).items())):
        if field not in FILTERS[entity]:
            raise BadRequest(f"{entity} cannot be filtered by {field}", code="invalid_parameter")
        name = f"filter_{n}"
        if field == "sku" and entity == "products":
            sql.append(f" AND r.sku = :{name}")
        else:
            sql.append(f" AND {reader.json_field('r.data', field)} = :{name}")
        if field == "active":
            value = (value == "true") if reader.dialect == "sqlite" else value  # json_extract gives 1/0
        params[name] = value
    sql.append(" ORDER BY r.updated_at, r.id LIMIT :limit")
    rows = await reader.all("".join(sql), params)
    more = len(rows) > limit
    rows = rows[:limit]
    items = [_with_raw(row[2], row[3]) for row in rows] if expand_raw else [as_bytes(row[2]) for row in rows]
    next_cursor = encode_cursor(reader.parse_ts(rows[-1][1]), as_text(rows[-1][0])) if more else None
    return items, next_cursor


PDF_MEDIA_TYPE = "application/pdf"


@dataclass(frozen=True)
class Receipt:
    """An order's receipt as the vendor rendered it: ``content`` (PDF bytes), sent as
    ``media_type`` under ``filename`` (``receipt-<order id>.pdf``, the gateway's id, never the vendor's)."""

    order_id: str
    content: bytes
    media_type: str = PDF_MEDIA_TYPE

    @property
    def filename(self) -> str:
        """``receipt-ord_....pdf``."""
        return f"receipt-{self.order_id}.pdf"


async def order_receipt(connector: Connector, order_id: str) -> Receipt:
    """The PDF receipt of a cached order, fetched from the vendor through the connector's
    optional :meth:`~gateway.sdk.connector.Connector.receipt_pdf` (AI POS: ``GET /sales/:id/receipt``,
    vendor doc "Sales & Bills"). Nothing is cached or evented: a receipt changes with the sale
    (a refund prints on it), so every call asks the vendor.

    The order is looked up first, so an unknown id answers 404 whatever the connector; a
    soft-deleted order (gone at the vendor) is unknown too.

    Args:
        connector: the connection's connector (from ``ConnectionService.connector_for``, which
            already scoped it to the tenant).
        order_id: the gateway's order id (``ord_...``).

    Returns:
        A :class:`Receipt` whose ``content`` starts ``%PDF-``.

    Raises:
        NotFound: no live order ``order_id`` on this connection (404).
        gateway.errors.OperationNotSupported: the connector has no receipts (422; ``apex``, ``local``).
        VendorError: the vendor failed (502/503/504, 424 for refused credentials), or the
            connector returned something that is not a PDF (502 ``vendor_invalid_response``).
    """
    async with connector.db.read() as conn:
        order = await load(conn, connection_id=connector.context.id, entity="orders", record_id=order_id,
                           include_deleted=False)
    if order is None:
        raise NotFound(f"no order {order_id!r} on connection {connector.context.id!r}")
    content = await connector.receipt_pdf(order_id)
    if not isinstance(content, bytes) or not content.startswith(b"%PDF-"):
        # The route promises application/pdf: a plugin's wrong answer is a vendor failure, not a 500.
        raise VendorError(f"the {connector.name()} connector returned a receipt that is not a PDF",
                          vendor=connector.name(), code="vendor_invalid_response")
    return Receipt(order_id=order["id"], content=content)
