"""The base of connectors that reach their vendor over HTTP (every connector but ``local``).

:class:`RemoteConnector` holds what each of them would otherwise write again: the connection's
settings merged with the manifest's defaults, one :class:`~gateway.sdk.http.VendorClient` per
instance (opened on first use, shared by nested users, closed when the outermost one ends) built
from the manifest's rate limit and the subclass's auth, the page size and safety stock
settings, the id maps between vendor ids and gateway ids of cached records, and the mapping
context built from them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import httpx
from sqlalchemy import select

from gateway.errors import VendorError
from gateway.mapping import MappingContext
from gateway.sdk.connector import Connector
from gateway.sdk.http import VendorClient
from gateway.storage import tables as t


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
    """

    client_overrides: ClassVar[dict[str, Any]] = {}
    client_class: ClassVar[type[VendorClient]] = VendorClient
    max_page_size: ClassVar[int] = 100

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
