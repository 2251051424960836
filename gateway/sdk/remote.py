"""The base of connectors that reach their vendor over HTTP (every connector but ``local``).

:class:`RemoteConnector` holds what each of them would otherwise write again: the connection's
settings merged with the manifest's defaults, one :class:`~gateway.sdk.http.VendorClient` per
instance (opened on first use, shared by nested users, closed when the outermost one ends) built
from the manifest's rate limit and the subclass's auth, the page size and safety stock
settings, the id maps between vendor ids and gateway ids of cached records, the mapping
context built from them, the records cache plumbing (:meth:`RemoteConnector._live`,
:meth:`RemoteConnector._vendor_record`, :meth:`RemoteConnector._cache`,
:meth:`RemoteConnector._upsert`) and the frame of a stock adjustment push at one location
(:meth:`RemoteConnector._push_at_location`).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import httpx
from sqlalchemy import select, update

from gateway import jsonutil
from gateway.errors import VendorError, field_error
from gateway.mapping import MappingContext, MappingError, MappingSpec
from gateway.sdk.connector import Connector, RemoteRecord
from gateway.sdk.http import VendorClient
from gateway.services import adjustments, journal, records
from gateway.services.adjustments import render_adjustment
from gateway.services.locks import LockBusy
from gateway.storage import tables as t
from gateway.storage.uow import UnitOfWork


def vendor_time(value: Any) -> datetime | None:
    """A vendor's ISO 8601 / RFC 3339 time (``2026-01-05T09:00:00.000Z``, ``...+05:30``; naive
    taken as UTC) as an aware UTC datetime; ``None`` when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def since_param(since: datetime) -> str:
    """An "updated at or after" filter value: RFC 3339 UTC in whole seconds with ``Z``, floored
    (flooring can only read a little more, never less); naive ``since`` is taken as UTC."""
    moment = since.astimezone(UTC) if since.tzinfo else since
    return moment.replace(microsecond=0, tzinfo=None).isoformat() + "Z"


class RemoteConnector(Connector):
    """A connector whose vendor is an HTTP API.

    Subclasses implement :meth:`auth` and may set ``client_class`` (a :class:`VendorClient`
    subclass) and ``max_page_size``. ``client_overrides`` (class attribute) is merged into the
    client's keyword arguments: tests subclass a connector to inject ``transport``, ``sleep``,
    ``retry``, ``rate_limit``...; production leaves it empty.

    Settings read here (declare them in the manifest's ``settings_schema``): ``base_url``
    (required), ``page_size``, ``safety_stock``.

    Mapping and caching: subclasses implement :meth:`_record` (one vendor object → a
    :class:`~gateway.sdk.connector.RemoteRecord`) and may override :meth:`_maps_for` (the id maps
    one object resolves against); ``vendor_title`` (``"HQ/Store"``) and ``vendor_id``
    (``"hqstore"``) name the vendor in the errors :meth:`_vendor_record` raises (both default to
    the manifest's name).
    """

    client_overrides: ClassVar[dict[str, Any]] = {}
    client_class: ClassVar[type[VendorClient]] = VendorClient
    max_page_size: ClassVar[int] = 100
    #: the vendor's display name in messages ("HQ/Store answered ..."); default: the manifest's name
    vendor_title: ClassVar[str] = ""
    #: the ``vendor`` of the errors raised for the vendor's answers; default: the manifest's name
    vendor_id: ClassVar[str] = ""
    #: the connector's compiled mappings by entity (``load_connector_mappings``), for :meth:`_write_body`
    mappings: ClassVar[dict[str, MappingSpec]] = {}

    def __init__(self, context: Any, db: Any) -> None:
        super().__init__(context, db)
        self.settings: dict[str, Any] = {**self.default_settings(), **(context.settings or {})}
        self._client: VendorClient | None = None
        self._users = 0

    # -- transport ---------------------------------------------------------------------------------
    def auth(self) -> httpx.Auth:
        """The ``httpx.Auth`` the vendor wants, from ``self.context.credentials``."""
        raise NotImplementedError

    def _make_client(self) -> VendorClient:
        options: dict[str, Any] = {
            "auth": self.auth(),
            "rate_limit": self.manifest.get("rate_limit"),
            "connection_id": self.context.id,
            "on_health_change": self.health_changed,
            "timeout": 30.0,
            "headers": {"Accept": "application/json"},
        }
        options.update(self.client_overrides)
        return self.client_class(self.name(), str(self.settings["base_url"]).rstrip("/"), **options)

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[VendorClient]:
        """The instance's client, opened on first use and closed when the outermost user ends."""
        if self._client is None:
            self._client = self._make_client()
        client = self._client
        self._users += 1
        try:
            yield client
        finally:
            self._users -= 1
            if self._users == 0 and self._client is client:
                self._client = None
                await client.aclose()

    # -- health ------------------------------------------------------------------------------------
    #: The vendor's health endpoint (relative to ``base_url``) and the members of its answer to pass on.
    health_path: ClassVar[str] = "/health"
    health_fields: ClassVar[tuple[str, ...]] = ()

    async def health(self) -> dict[str, Any]:
        """``GET health_path``: ``{"status": "ok"|"unhealthy", "latency_ms", <health_fields>}``, or
        with ``error`` and ``detail`` (no fields) when the vendor could not be asked. Never raises."""
        started = time.perf_counter()
        try:
            async with self._session() as client:
                body = await client.json("GET", self.health_path)
        except VendorError as exc:
            return {"status": "unhealthy", "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                    "error": exc.code, "detail": exc.detail}
        answer = body if isinstance(body, dict) else {}
        return {"status": "ok" if answer.get("status") == "ok" else "unhealthy",
                "latency_ms": round((time.perf_counter() - started) * 1000, 1),
                **{name: answer.get(name) for name in self.health_fields}}

    # -- settings ----------------------------------------------------------------------------------
    @property
    def page_size(self) -> int:
        """Records asked per list page: the ``page_size`` setting, 1 to ``max_page_size``."""
        return max(1, min(self.max_page_size, int(self.settings.get("page_size") or self.max_page_size)))

    @property
    def safety_stock(self) -> Decimal:
        """Units held back from sale (``available = max(on_hand - safety_stock, 0)``)."""
        return Decimal(str(self.settings.get("safety_stock") or "0"))

    # -- references --------------------------------------------------------------------------------
    async def _id_map(self, entity: str, remote_ids: Iterable[str] | None = None) -> dict[str, str]:
        """Vendor id -> gateway id of the connection's cached ``entity`` records (soft-deleted ones
        too: ids are stable); all of them, or those of ``remote_ids``."""
        query = select(t.records.c.remote_id, t.records.c.id).where(
            t.records.c.connection_id == self.context.id, t.records.c.entity == entity
        )
        if remote_ids is not None:
            wanted = sorted({r for r in remote_ids if isinstance(r, str) and r})
            if not wanted:
                return {}
            query = query.where(t.records.c.remote_id.in_(wanted))
        async with self.db.read() as conn:
            return {row.remote_id: row.id for row in (await conn.execute(query)).all()}

    async def _remote_map(self, entity: str, ids: Iterable[str | None]) -> dict[str, str]:
        """Gateway id -> vendor id of live cached ``entity`` records among ``ids``."""
        wanted = sorted({i for i in ids if i})
        if not wanted:
            return {}
        async with self.db.read() as conn:
            rows = (await conn.execute(select(t.records.c.id, t.records.c.remote_id).where(
                t.records.c.connection_id == self.context.id, t.records.c.entity == entity,
                t.records.c.id.in_(wanted), t.records.c.deleted_at.is_(None),
            ))).all()
        return {row.id: row.remote_id for row in rows}

    def _ctx(self, maps: dict[str, dict[str, str]] | None = None,
             remote: dict[str, dict[str, str]] | None = None) -> MappingContext:
        """A mapping context over the settings and the given id maps (``{entity: {id: id}}``)."""
        maps, remote = maps or {}, remote or {}
        return MappingContext(
            settings=self.settings,
            resolve=lambda entity, rid: maps.get(entity, {}).get(rid),
            remote=lambda entity, gid: remote.get(entity, {}).get(gid),
        )

    # -- records cache -------------------------------------------------------------------------------
    def _record(self, entity: str, raw: dict[str, Any], ctx: MappingContext) -> RemoteRecord:
        """Map one vendor object of ``entity`` through the connector's mapping, resolving
        references with ``ctx`` (:meth:`_ctx`).

        Raises:
            MappingError: the object does not fit the entity's mapping (names the field and value).
        """
        raise NotImplementedError

    def _vendor_record(self, entity: str, raw: Any, ctx: MappingContext) -> RemoteRecord:
        """:meth:`_record` for an object the vendor just answered: a misfit is the vendor's fault.

        Raises:
            VendorError: ``vendor_invalid_response`` (502), ``raw`` is not a JSON object or the
                mapping cannot read it ("<vendor_title> answered a <entity> ...").
        """
        title, vendor = self.vendor_title or self.name(), self.vendor_id or self.name()
        if not isinstance(raw, dict):
            raise VendorError(f"{title} answered a {entity} that is not an object", vendor=vendor,
                              code="vendor_invalid_response")
        try:
            return self._record(entity, raw, ctx)
        except MappingError as exc:
            raise VendorError(f"{title} answered a {entity} the mapping cannot read: {exc}", vendor=vendor,
                              code="vendor_invalid_response") from exc

    async def _maps_for(self, entity: str, raw: dict[str, Any]) -> dict[str, dict[str, str]]:
        """The id maps (``{entity: {vendor id: gateway id}}``) one vendor object of ``entity``
        resolves against, for :meth:`_cache`; only its own references. Default: none."""
        return {}

    async def _upsert(self, uow: UnitOfWork, entity: str, record: RemoteRecord,
                      event_type: str | None = None) -> records.UpsertResult:
        """Upsert ``record`` into the connection's cache in ``uow``
        (:func:`gateway.services.records.upsert`: its ``remote_updated_at`` is the version guard,
        an older one changes nothing); ``event_type`` names an update's event (default
        ``<noun>.updated``)."""
        return await records.upsert(uow, connection_id=self.context.id, entity=entity, remote_id=record.remote_id,
                                    body=record.body, raw=record.raw, remote_updated_at=record.remote_updated_at,
                                    created_at=record.created_at, event_type=event_type)

    async def _cache(self, entity: str, raw: Any, *, event_type: str | None = None,
                     uow: UnitOfWork | None = None) -> dict[str, Any]:
        """Map a vendor object the vendor just answered (references through :meth:`_maps_for`)
        and upsert it (:meth:`_upsert`) in ``uow``, or in a transaction of its own.

        Returns:
            The cached record (the newer one when ``raw`` was stale).

        Raises:
            VendorError: ``vendor_invalid_response``, see :meth:`_vendor_record`.
        """
        maps = await self._maps_for(entity, raw) if isinstance(raw, dict) else {}
        record = self._vendor_record(entity, raw, self._ctx(maps))
        if uow is not None:
            return (await self._upsert(uow, entity, record, event_type)).record
        async with self.db.transaction(self.context.tenant_id) as tx:
            return (await self._upsert(tx, entity, record, event_type)).record

    async def _live(self, entity: str, record_id: str | None) -> dict[str, Any] | None:
        """The connection's cached ``entity`` record ``record_id`` when it is not soft-deleted;
        ``None`` when there is none (or ``record_id`` is empty)."""
        if not record_id:
            return None
        async with self.db.read() as conn:
            return await records.load(conn, connection_id=self.context.id, entity=entity, record_id=record_id,
                                      include_deleted=False)

    def _write_body(self, entity: str, data: dict[str, Any], remote: dict[str, dict[str, str]]) -> dict[str, Any]:
        """The vendor's write body for ``data`` (a unified request body, JSON types) through the
        ``write`` side of ``mappings[entity]``; ``remote``: gateway id -> vendor id maps by entity.

        Raises:
            ValidationFailed: (422 ``unsupported_by_vendor``) the body does not fit the vendor; ``loc``
                is the field's path, ``["body", "lines", "0", "quantity"]``.
        """
        try:
            return self.mappings[entity].write(data, self._ctx(remote=remote))
        except MappingError as exc:
            field = (exc.field or "body").lstrip(".")
            raise field_error(("body", *[p for p in re.split(r"[.\[\]]+", field) if p]), str(exc),
                              "unsupported_by_vendor") from exc

    async def _adjustment_product(self, body: Any) -> dict[str, Any]:
        """The cached, live product an adjustment request names (``body.product_id``, else
        ``body.sku``), for a vendor without variants.

        Raises:
            ValidationFailed: ``variant_id`` given (``unsupported_by_vendor``), or no such product
                on this connection (``unknown_product``).
        """
        if body.variant_id:
            raise field_error(("body", "variant_id"), f"{self.vendor_title or self.name()} products have no variants",
                              "unsupported_by_vendor")
        product = await self._live("products", body.product_id) if body.product_id else None
        if product is None and body.sku and not body.product_id:
            async with self.db.read() as conn:
                product = await records.find_product_by_sku(conn, connection_id=self.context.id, sku=body.sku)
        if product is None:
            raise field_error(("body", "product_id"), "no such product on this connection", "unknown_product")
        return product

    # -- stock adjustments ---------------------------------------------------------------------------
    async def _push_at_location(self, adjustment_id: str, *, final: bool) -> dict[str, Any]:
        """The frame of ``push_adjustment`` for a vendor whose stock is per product and location:
        load the adjustment (not ``pending`` → rendered as it is); its product and location must
        still be live (else ``_not_applied`` fatal, ``unknown_product`` / ``unknown_location``);
        then, holding the stock row's lock (:func:`gateway.services.adjustments.stock_lock`) and
        the client, :meth:`_push_held`. A lock held elsewhere → ``_not_applied``, not fatal.

        Returns:
            The Adjustment as :func:`gateway.services.adjustments.render_adjustment` renders it.

        Raises:
            NotFound: no such adjustment on this connection.
            PushDeferred: no verdict yet (from :meth:`_not_applied`).
        """
        async with self.db.read() as conn:
            row = await adjustments.load(conn, self.context.id, adjustment_id)
        if row["status"] != "pending":
            return render_adjustment(row)
        product = await self._live("products", row["product_id"])
        location = await self._live("locations", row["location_id"])
        if product is None or location is None:
            gone = f"product {row['product_id']}" if product is None else f"location {row['location_id']}"
            return await self._not_applied(adjustment_id, f"unknown_{gone.split()[0]}: {gone} is no longer on this "
                                           "connection", fatal=True, final=final)
        try:
            async with adjustments.stock_lock(self.db, self.context.id, product["id"], location["id"]) as held, \
                    self._session() as client:
                return await self._push_held(client, held, adjustment_id, product, location, final=final)
        except LockBusy as exc:
            return await self._not_applied(adjustment_id, exc, fatal=False, final=final)

    async def _push_held(self, client: VendorClient, held: Any, adjustment_id: str, product: dict[str, Any],
                         location: dict[str, Any], *, final: bool) -> dict[str, Any]:
        """One push of ``adjustment_id`` under the stock row's lock ``held`` (its ``verify(uow)``
        checks the lock is still this push's), with the live cached ``product`` and ``location``;
        subclasses that call :meth:`_push_at_location` implement it.

        Returns:
            The Adjustment, settled or still ``pending``.
        """
        raise NotImplementedError

    async def _not_applied(self, adjustment_id: str, error: Any, *, fatal: bool, final: bool) -> dict[str, Any]:
        """An attempt that did not apply the adjustment:
        :func:`gateway.services.adjustments.not_applied` (``fatal`` or ``final`` → ``failed``;
        else the attempt is recorded and :class:`~gateway.services.adjustments.PushDeferred`
        raised). Subclasses override it to word ``error`` (e.g. an outcome left unknown)."""
        return await adjustments.not_applied(self.db, self.context.tenant_id, adjustment_id, error, fatal=fatal,
                                             final=final)

    async def _clear_intent(self, adjustment_id: str) -> None:
        """The set recorded for ``adjustment_id`` (its ``intent_before_milli`` /
        ``intent_target_milli``) did not land: forget it while the adjustment is ``pending``, and
        void its write journal entry (:func:`gateway.services.journal.close`)."""
        async with self.db.transaction() as uow:
            await uow.conn.execute(update(t.adjustments).where(
                t.adjustments.c.id == adjustment_id, t.adjustments.c.status == "pending").values(
                intent_before_milli=None, intent_target_milli=None, updated_at=jsonutil.utcnow()))
            await journal.close(uow, adjustment_id)
