"""Inventory links: stock locations of two or more connections kept in one pool.

A shop with two POS systems, or a POS and a stock-keeping store, links one location of each
(``/v1/inventory-links``). When ``on_hand`` changes at one member and the change did not come
from the link, the same delta is pushed to every other member as an adjustment
(``adjustments.link_id``, reason ``link``), matching the product by its ``sku`` or ``barcode``
(the variant's, for a variant's stock).

How a change is seen, and why there are no loops:

- **Every change of a member's cached level is a candidate.** All cache writes of inventory go
  through :func:`gateway.services.records.upsert_many`, which hands the levels whose ``on_hand``
  changed to :func:`propagate` *in the same transaction*: a till sale reported by webhook or
  poll, a count found by reconciliation (``inventory.drift``), a sale or adjustment of the
  built-in ``local`` engine, and a consumer's adjustment to an external POS once the POS reports
  it back (an echo, cached without ``inventory.updated``, is still a change of the pool).
  Because the propagated adjustments (``pending``, each with its push job) commit with the
  change or not at all, each change is propagated exactly once, never lost, never twice.
- **What the link wrote is subtracted.** The part of a change made by the link's own
  adjustments is not propagated again:

  * a report the write journal explains (:func:`gateway.services.journal.absorb`) names the
    adjustments it matched: the deltas of those with a ``link_id`` are subtracted;
  * a read-back in the transaction that settles a link adjustment as ``applied`` is declared by
    the pushing connector (:func:`landed`): its delta is subtracted unless an earlier report
    already matched its journal entry.

  So one logical change makes one write per other member, and those writes come back to nobody.
- **Created levels are not changes**: a level first seen by a sync is the member's starting
  point. Linking does not align counts that differ when the link is made; only later deltas flow.

Residual risk (documented, small): a webhook or poll that reports a link's write *folded with*
a genuine change at the same level (a till sale in between), after the POS applied the write but
before the gateway heard back from it, cannot be split and is propagated whole; the journal's
window and the stock row lock make this the read-modify-write race of a few hundred milliseconds.

Quantities are thousandths of a unit (``*_milli``), as in :mod:`gateway.services.adjustments`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from gateway import jsonutil
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.ids import new_id
from gateway.model.inventory import InventoryLinkCreate, InventoryLinkUpdate
from gateway.sdk.registry import UnknownConnector
from gateway.services import adjustments
from gateway.storage import tables as t
from gateway.storage.db import Database
from gateway.storage.uow import UnitOfWork

log = logging.getLogger("tillgate.inventory_links")

#: The reason of the adjustments a link makes.
REASON = "link"

#: Link adjustments whose write a transaction's read-back includes (see :func:`landed`).
_LANDED: weakref.WeakKeyDictionary[UnitOfWork, dict[tuple[str, str], list[str]]] = weakref.WeakKeyDictionary()


@dataclass
class LevelChange:
    """A change of one cached inventory level, as :func:`records.upsert_many` writes it.

    Attributes:
        record: the level as stored (entity fields ``product_id``, ``variant_id``, ``location_id``,
            ``on_hand``... and ``id``).
        remote_id: the level's vendor id (the journal's key).
        before: the cached ``on_hand`` before (decimal string).
        matched: for an echo, the ``(adjustment id, delta_milli)`` journal entries the report used;
            ``None`` for a report that is not (only) the gateway's writes.
    """

    record: dict[str, Any]
    remote_id: str
    before: Any
    matched: list[tuple[str | None, int]] | None = None


def _milli(value: Any) -> int | None:
    """A quantity (decimal string) in thousandths; ``None`` when absent or finer than 0.001."""
    if value is None or isinstance(value, bool):
        return None
    try:
        scaled = Decimal(str(value)) * 1000
    except InvalidOperation:
        return None
    return int(scaled) if scaled == scaled.to_integral_value() else None


def landed(uow: UnitOfWork, adjustment: dict[str, Any], remote_id: str) -> None:
    """Declare, before caching a read-back of level ``remote_id`` in ``uow``, that the POS applied
    ``adjustment`` (an ``adjustments`` row) and the read-back includes it: if it is a link's
    adjustment, :func:`propagate` does not send its delta back to the other members. A no-op for
    adjustments that are not a link's."""
    if adjustment.get("link_id"):
        _LANDED.setdefault(uow, {}).setdefault((adjustment["connection_id"], remote_id), []).append(adjustment["id"])


async def _linked_part(uow: UnitOfWork, connection_id: str, changes: Sequence[LevelChange]) -> dict[str, int]:
    """remote id -> thousandths of its change that the links' own adjustments made."""
    declared = _LANDED.get(uow, {})
    wanted: set[str] = set()
    for change in changes:
        if change.matched is not None:
            wanted |= {adjustment_id for adjustment_id, _ in change.matched if adjustment_id}
        else:
            wanted |= set(declared.get((connection_id, change.remote_id), []))
    if not wanted:
        return {}
    rows = (await uow.conn.execute(select(t.adjustments.c.id, t.adjustments.c.delta_milli).where(
        t.adjustments.c.id.in_(sorted(wanted)), t.adjustments.c.link_id.is_not(None)))).all()
    linked = {row.id: row.delta_milli for row in rows}
    if not linked:
        return {}
    matched_before = {(row.adjustment_id, row.remote_id) for row in (await uow.conn.execute(
        select(t.write_journal.c.adjustment_id, t.write_journal.c.remote_id).where(
            t.write_journal.c.adjustment_id.in_(sorted(linked)), t.write_journal.c.status == "matched"))).all()}
    part: dict[str, int] = {}
    for change in changes:
        if change.matched is not None:
            amount = sum(delta for adjustment_id, delta in change.matched if adjustment_id in linked)
        else:
            ids = declared.pop((connection_id, change.remote_id), [])
            amount = sum(linked[a] for a in ids if a in linked and (a, change.remote_id) not in matched_before)
        if amount:
            part[change.remote_id] = part.get(change.remote_id, 0) + amount
    return part


async def _members_of(uow: UnitOfWork, connection_id: str) -> list[Any]:
    """Every member of the enabled links that have a location of ``connection_id``, with the
    link's ``match_by`` (rows: link_id, match_by, connection_id, location_id)."""
    source = t.inventory_link_members.alias("source")
    m, links, cons = t.inventory_link_members, t.inventory_links, t.connections
    query = (
        select(m.c.link_id, links.c.match_by, m.c.connection_id, m.c.location_id)
        .select_from(source.join(links, links.c.id == source.c.link_id)
                     .join(m, m.c.link_id == source.c.link_id)
                     .join(cons, cons.c.id == m.c.connection_id))
        .where(source.c.connection_id == connection_id, links.c.status == "enabled", cons.c.deleted_at.is_(None))
        .order_by(m.c.link_id, m.c.position)
    )
    return list((await uow.conn.execute(query)).all())


async def _identifier(uow: UnitOfWork, connection_id: str, level: dict[str, Any], match_by: str) -> str | None:
    """The ``sku`` / ``barcode`` of the level's product (its variant's, for a variant level)."""
    row = (await uow.conn.execute(select(t.records.c.data).where(
        t.records.c.connection_id == connection_id, t.records.c.entity == "products",
        t.records.c.id == level.get("product_id")))).first()
    if row is None:
        return None
    product = jsonutil.loads(row.data)
    if level.get("variant_id"):
        variant = next((v for v in product.get("variants") or [] if v.get("id") == level["variant_id"]), None)
        return None if variant is None else variant.get(match_by)
    return product.get(match_by)


async def _find(uow: UnitOfWork, connection_id: str, match_by: str, identifier: str) -> list[tuple[str, str]]:
    """The live (product id, variant id or ``""``) at ``connection_id`` carrying ``identifier``."""
    idx, rec = t.sku_index, t.records
    rows = (await uow.conn.execute(
        select(idx.c.record_id, idx.c.variant_id).select_from(idx.join(rec, rec.c.id == idx.c.record_id))
        .where(idx.c.connection_id == connection_id, idx.c.kind == match_by, idx.c.sku == identifier,
               rec.c.deleted_at.is_(None)).limit(2))).all()
    return [(row.record_id, row.variant_id) for row in rows]


async def propagate(uow: UnitOfWork, connection_id: str, changes: Sequence[LevelChange]) -> list[dict[str, Any]]:
    """Mirror the changes of cached levels of ``connection_id`` to the other members of their
    inventory links, in ``uow`` (see the module docstring).

    For each change at a linked location: the delta (after minus before, less the links' own
    writes) becomes a ``pending`` adjustment with its push job at every other member's location,
    for the product carrying the same ``match_by`` identifier. A member with no such product, or
    more than one, is skipped and counted on the link (``unmatched_count``, ``last_unmatched``).

    Returns:
        the adjustments queued (as the API renders them).
    """
    if not changes or uow.tenant_id is None:
        return []
    members = await _members_of(uow, connection_id)
    if not members:
        return []
    link_of: dict[str, tuple[str, str]] = {}  # source location -> (link id, match_by)
    for row in members:
        if row.connection_id == connection_id:
            link_of[row.location_id] = (row.link_id, row.match_by)
    linked_changes = [c for c in changes if c.record.get("location_id") in link_of]
    if not linked_changes:
        return []
    own = await _linked_part(uow, connection_id, linked_changes)
    queued: list[dict[str, Any]] = []
    unmatched: dict[str, list[str]] = {}
    now = jsonutil.utcnow()
    for change in linked_changes:
        before, after = _milli(change.before), _milli(change.record.get("on_hand"))
        if before is None or after is None:
            continue
        delta = after - before - own.get(change.remote_id, 0)
        if delta == 0:
            continue
        location_id = change.record["location_id"]
        link_id, match_by = link_of[location_id]
        identifier = await _identifier(uow, connection_id, change.record, match_by)
        for member in members:
            if member.link_id != link_id or (member.connection_id, member.location_id) == (connection_id, location_id):
                continue
            found = await _find(uow, member.connection_id, match_by, identifier) if identifier else []
            if len(found) != 1:
                what = (f"no {match_by} on product {change.record.get('product_id')}" if not identifier else
                        f"{'no' if not found else 'more than one'} product with {match_by} {identifier!r}")
                unmatched.setdefault(link_id, []).append(
                    f"{what} at connection {member.connection_id}: a change of {adjustments.milli_to_str(delta)} "
                    f"at {connection_id} location {location_id} was not propagated")
                continue
            product_id, variant_id = found[0]
            queued.append(await adjustments.store_pending(uow, {
                "id": new_id("adjustment"), "tenant_id": uow.tenant_id, "connection_id": member.connection_id,
                "product_id": product_id, "variant_id": variant_id or None, "location_id": member.location_id,
                "delta_milli": delta, "reason": REASON, "reference": f"{connection_id}:{change.record.get('id')}",
                "link_id": link_id, "created_at": now, "updated_at": now,
            }))
    for link_id, notes in unmatched.items():
        for note in notes:
            log.warning("inventory link %s: %s", link_id, note)
        await uow.conn.execute(update(t.inventory_links).where(t.inventory_links.c.id == link_id).values(
            unmatched_count=t.inventory_links.c.unmatched_count + len(notes), last_unmatched=notes[-1][:2000],
            last_unmatched_at=now))
    return queued


# -- the API's service -----------------------------------------------------------------------------
def render_link(row: Any, members: list[Any]) -> dict[str, Any]:
    """The API's InventoryLink for an ``inventory_links`` row and its member rows."""
    return {
        "id": row.id, "object": "inventory_link", "name": row.name, "match_by": row.match_by, "status": row.status,
        "members": [{"connection_id": m.connection_id, "location_id": m.location_id}
                    for m in sorted(members, key=lambda m: m.position)],
        "unmatched_count": row.unmatched_count, "last_unmatched": row.last_unmatched,
        "last_unmatched_at": jsonutil.rfc3339(row.last_unmatched_at),
        "created_at": jsonutil.rfc3339(row.created_at), "updated_at": jsonutil.rfc3339(row.updated_at),
    }


def _member_error(index: int, field: str, message: str, type_: str) -> dict[str, Any]:
    return {"loc": ["body", "members", index, field], "msg": message, "type": type_}


class InventoryLinkService:
    """``/v1/inventory-links``: create, list, read, enable/disable, rename, delete."""

    def __init__(self, db: Database, registry: Any) -> None:
        self.db = db
        self.registry = registry

    async def _check_members(self, conn: Any, tenant_id: str, body: InventoryLinkCreate) -> None:
        """Each member a live connection of the tenant whose connector writes stock deltas, and a
        live location of it; no location twice.

        Raises:
            ValidationFailed: ``unknown_connection``, ``inventory_write_unsupported``,
                ``unknown_location``, ``duplicate_member``.
        """
        seen: set[tuple[str, str]] = set()
        for index, member in enumerate(body.members):
            key = (member.connection_id, member.location_id)
            if key in seen:
                raise ValidationFailed("a location is listed twice", code="duplicate_member",
                                       errors=[_member_error(index, "location_id", "listed twice", "duplicate")])
            seen.add(key)
            connection = (await conn.execute(select(t.connections.c.connector).where(
                t.connections.c.id == member.connection_id, t.connections.c.tenant_id == tenant_id,
                t.connections.c.deleted_at.is_(None)))).first()
            if connection is None:
                raise ValidationFailed(f"no connection {member.connection_id!r} on this account",
                                       code="unknown_connection", errors=[_member_error(
                                           index, "connection_id", "no such connection", "unknown_connection")])
            try:
                manifest = self.registry.get(connection.connector).manifest
            except UnknownConnector:  # its plugin is no longer installed
                manifest = {}
            writes = ((manifest.get("capabilities") or {}).get("inventory") or {}).get("write") or []
            if "adjust" not in writes:
                raise ValidationFailed(
                    f"connector {connection.connector!r} cannot write stock deltas, so it cannot be linked",
                    code="inventory_write_unsupported", errors=[_member_error(
                        index, "connection_id", "the connector does not adjust stock", "inventory_write_unsupported")])
            location = (await conn.execute(select(t.records.c.id).where(
                t.records.c.connection_id == member.connection_id, t.records.c.entity == "locations",
                t.records.c.id == member.location_id, t.records.c.deleted_at.is_(None)))).first()
            if location is None:
                raise ValidationFailed(
                    f"no location {member.location_id!r} on connection {member.connection_id!r} (sync it first)",
                    code="unknown_location",
                    errors=[_member_error(index, "location_id", "no such location", "unknown_location")])

    async def create(self, tenant_id: str, body: InventoryLinkCreate) -> dict[str, Any]:
        """Link the members' locations.

        Raises:
            ValidationFailed: see :meth:`_check_members`.
            Conflict: ``location_already_linked`` (a location is in another link).
        """
        link_id = new_id("inventory_link")
        now = jsonutil.utcnow()
        try:
            async with self.db.transaction(tenant_id) as uow:
                await self._check_members(uow.conn, tenant_id, body)
                await self._refuse_linked(uow.conn, body)
                await uow.conn.execute(insert(t.inventory_links).values(
                    id=link_id, tenant_id=tenant_id, name=body.name, match_by=body.match_by, status="enabled",
                    unmatched_count=0, created_at=now, updated_at=now))
                await uow.conn.execute(insert(t.inventory_link_members), [
                    {"link_id": link_id, "connection_id": m.connection_id, "location_id": m.location_id,
                     "tenant_id": tenant_id, "position": position} for position, m in enumerate(body.members)])
        except IntegrityError as exc:  # a concurrent link took one of the locations
            raise Conflict("a location of this link is already in another inventory link",
                           code="location_already_linked") from exc
        return await self.get(tenant_id, link_id)

    async def _refuse_linked(self, conn: Any, body: InventoryLinkCreate) -> None:
        m = t.inventory_link_members
        taken = (await conn.execute(select(m.c.link_id, m.c.connection_id, m.c.location_id).where(or_(*[
            and_(m.c.connection_id == member.connection_id, m.c.location_id == member.location_id)
            for member in body.members])).limit(1))).first()
        if taken is not None:
            raise Conflict(f"location {taken.location_id!r} of connection {taken.connection_id!r} is already in "
                           f"inventory link {taken.link_id!r}", code="location_already_linked", link_id=taken.link_id)

    async def get(self, tenant_id: str, link_id: str) -> dict[str, Any]:
        """One link.

        Raises:
            NotFound: no such link of this tenant.
        """
        async with self.db.read() as conn:
            row = (await conn.execute(select(t.inventory_links).where(
                t.inventory_links.c.id == link_id, t.inventory_links.c.tenant_id == tenant_id))).first()
            if row is None:
                raise NotFound(f"no inventory link {link_id!r}")
            members = (await conn.execute(select(t.inventory_link_members).where(
                t.inventory_link_members.c.link_id == link_id))).all()
        return render_link(row, list(members))

    async def list(self, tenant_id: str, *, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the tenant's links, oldest first, and the cursor of the next page."""
        from gateway.services.records import keyset_page

        query = select(t.inventory_links).where(t.inventory_links.c.tenant_id == tenant_id)
        async with self.db.read() as conn:
            rows, next_cursor = await keyset_page(conn, t.inventory_links, query, limit=limit, cursor=cursor)
            members: dict[str, list[Any]] = {}
            if rows:
                for m in (await conn.execute(select(t.inventory_link_members).where(
                        t.inventory_link_members.c.link_id.in_([r.id for r in rows])))).all():
                    members.setdefault(m.link_id, []).append(m)
        return [render_link(row, members.get(row.id, [])) for row in rows], next_cursor

    async def update(self, tenant_id: str, link_id: str, body: InventoryLinkUpdate) -> dict[str, Any]:
        """Rename, enable or disable a link.

        Raises:
            NotFound: no such link.
            ValidationFailed: ``null`` sent for ``status``.
        """
        if "status" in body.model_fields_set and body.status is None:
            raise ValidationFailed("status cannot be null", errors=[
                {"loc": ["body", "status"], "msg": "may not be null", "type": "null_not_allowed"}])
        await self.get(tenant_id, link_id)
        values: dict[str, Any] = {"updated_at": jsonutil.utcnow()}
        if "name" in body.model_fields_set:
            values["name"] = body.name
        if body.status is not None:
            values["status"] = body.status
        async with self.db.transaction(tenant_id) as uow:
            await uow.conn.execute(update(t.inventory_links).where(
                t.inventory_links.c.id == link_id, t.inventory_links.c.tenant_id == tenant_id).values(**values))
        return await self.get(tenant_id, link_id)

    async def delete(self, tenant_id: str, link_id: str) -> dict[str, Any]:
        """Unlink: later changes are not propagated; adjustments the link already queued are still
        pushed. Returns the link as it was.

        Raises:
            NotFound: no such link.
        """
        link = await self.get(tenant_id, link_id)
        async with self.db.transaction(tenant_id) as uow:
            await uow.conn.execute(delete(t.inventory_link_members).where(t.inventory_link_members.c.link_id == link_id))
            await uow.conn.execute(delete(t.inventory_links).where(
                t.inventory_links.c.id == link_id, t.inventory_links.c.tenant_id == tenant_id))
        return link
