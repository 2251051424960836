"""The connector base class.

A :class:`Connector` is created per connection and request with a :class:`ConnectionContext`
(the connection's id, tenant, settings and decrypted credentials) and the database. Read
operations serve from the records cache and need no connector code; writes are carried out at
the vendor by the connector, which then caches the result. Every write method not overridden,
and the optional :meth:`Connector.receipt_pdf`, answers 422 ``operation_not_supported``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any, ClassVar

import orjson
from sqlalchemy import update

from gateway.errors import OperationNotSupported
from gateway.jsonutil import utcnow
from gateway.storage import tables as t
from gateway.storage.db import Database
from gateway.storage.uow import UnitOfWork


@dataclass
class RemoteRecord:
    """One record as a connector read it, already in the unified shape.

    ``body`` holds the unified entity fields (references resolved to gateway ids);
    ``remote_updated_at`` is the vendor's modification time when it has one (aware UTC).
    """

    remote_id: str
    body: dict[str, Any]
    raw: Any = None
    remote_updated_at: datetime | None = None
    created_at: datetime | None = None


@dataclass
class InboundEvent:
    """A vendor webhook delivery, verified and parsed by :meth:`Connector.verify_webhook`.

    Attributes:
        id: the vendor's event id: deliveries are deduplicated on (connection, id), so the
            vendor's retries and duplicates are stored once.
        type: the vendor's event type (``sale.created``).
        occurred_at: when the vendor says the event happened (aware UTC), if it says.
        payload: the parsed body (exact decimals), handed back to :meth:`Connector.apply_webhook`.
    """

    id: str
    type: str
    occurred_at: datetime | None
    payload: Any


class Page:
    """A page of a read: its records and the position after it (``None`` after the last page).

    Args:
        records: the mapped records; or pass ``load``, a callable returning them, and they are
            mapped on first access of :attr:`records`: the sync engine never maps a page it skips.
        checkpoint: where to resume after this page; ``None`` after the last one.
        fingerprint: a digest of everything the records are made from: the vendor's response
            bytes and every other input of the mapping (mapping files, connection settings,
            reference id maps); see :meth:`Connector.page_fingerprint`. ``None`` when the connector
            cannot tell. Two pages with the same fingerprint map to the same records, which is what
            lets a scan skip a page the previous scan already stored.
    """

    __slots__ = ("_load", "_records", "checkpoint", "fingerprint")

    def __init__(
        self,
        records: list[RemoteRecord] | None = None,
        checkpoint: dict[str, Any] | None = None,
        *,
        load: Callable[[], list[RemoteRecord]] | None = None,
        fingerprint: str | None = None,
    ) -> None:
        if (records is None) == (load is None):
            raise TypeError("Page takes records or load, not both")
        self._records = records
        self._load = load
        self.checkpoint = checkpoint
        self.fingerprint = fingerprint

    @property
    def records(self) -> list[RemoteRecord]:
        """The page's records (mapped now if the page was made with ``load``).

        Raises:
            whatever ``load`` raises (a mapping error names the field and vendor value).
        """
        if self._records is None:
            assert self._load is not None
            self._records = self._load()
        return self._records

    def __repr__(self) -> str:
        size = "unmapped" if self._records is None else len(self._records)
        return f"Page({size} records, checkpoint={self.checkpoint!r}, fingerprint={self.fingerprint!r})"


def page_fingerprint(base: str, digest: str | None) -> str | None:
    """:attr:`Page.fingerprint` from a :meth:`Connector.fingerprint_base` and the SHA-256 hex of the
    response bytes (``gateway.sdk.pagination.Page.digest``); ``None`` when ``digest`` is."""
    if digest is None:
        return None
    return hashlib.sha256(f"{base}:{digest}".encode()).hexdigest()


#: Health recordings in flight (kept referenced until done).
_BACKGROUND: set[asyncio.Task[None]] = set()


def load_manifest(package: str) -> dict[str, Any]:
    """Read ``manifest.json`` from a connector package (e.g. ``"connectors.local"``)."""
    return json.loads(resources.files(package).joinpath("manifest.json").read_text(encoding="utf-8"))


@dataclass
class ConnectionContext:
    """The connection a connector instance works for. ``credentials`` are decrypted, never logged."""

    id: str
    tenant_id: str
    connector: str
    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    credentials: dict[str, Any] = field(repr=False, default_factory=dict)


class Connector:
    """Base class of connector plugins.

    Class attributes:
        manifest: the parsed ``manifest.json``.

    Write methods take the validated request model (``gateway.model.*Create``) and return the
    unified record (dict) as cached.
    """

    manifest: ClassVar[dict[str, Any]] = {}

    def __init__(self, context: ConnectionContext, db: Database) -> None:
        self.context = context
        self.db = db

    @classmethod
    def name(cls) -> str:
        """The connector's name, from its manifest."""
        return cls.manifest["name"]

    @classmethod
    def default_settings(cls) -> dict[str, Any]:
        """Defaults from the settings JSON Schema's ``default`` members."""
        props = cls.manifest.get("settings_schema", {}).get("properties", {})
        return {key: spec["default"] for key, spec in props.items() if "default" in spec}

    # -- life cycle ----------------------------------------------------------------------------
    async def check(self) -> None:
        """Verify the credentials with the vendor.

        Raises:
            gateway.errors.VendorCredentialsRejected: the vendor refused them.
            gateway.errors.VendorError: the vendor could not be asked.
        """

    async def setup(self, uow: UnitOfWork) -> None:
        """Called in the transaction that creates the connection (e.g. to create defaults)."""

    def health_changed(self, change: str, client: Any = None) -> None:
        """A :class:`~gateway.sdk.http.VendorClient` callback: the connection's circuit breaker
        opened (``"unhealthy"``) or closed again (``"recovered"``). Records it in the background:
        the connection's ``status`` and a ``connection.unhealthy|recovered`` event."""
        task = asyncio.get_running_loop().create_task(self._record_health(change))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def _record_health(self, change: str) -> None:
        status = "unhealthy" if change == "unhealthy" else "active"
        async with self.db.transaction(self.context.tenant_id) as uow:
            await uow.conn.execute(
                update(t.connections)
                .where(t.connections.c.id == self.context.id, t.connections.c.deleted_at.is_(None))
                .values(status=status, updated_at=utcnow())
            )
            uow.emit(f"connection.{change}", self.context.id,
                     {"connection_id": self.context.id, "connector": self.name(), "status": status}, ["status"])

    async def health(self) -> dict[str, Any]:
        """A live check of the vendor: ``{"status": "ok"|"unhealthy", "latency_ms": ..., ...}``."""
        return {"status": "ok"}

    # -- reads (sync) ----------------------------------------------------------------------------
    def fingerprint_base(self, *inputs: Any) -> str:
        """SHA-256 hex of what, besides the vendor's bytes, decides how a page maps: the gateway
        and connector versions, the connection's settings, and ``inputs`` (JSON-encodable: the
        mapping file's :attr:`~gateway.mapping.MappingSpec.digest`, the reference id maps the
        mapping resolves against...). Compute it once per read; combine it with each response's
        digest through :func:`page_fingerprint`.

        Raises:
            TypeError: an input has no JSON form.
        """
        from gateway import __version__

        material = [__version__, self.name(), self.manifest.get("version"), self.context.settings, list(inputs)]
        return hashlib.sha256(orjson.dumps(material, option=orjson.OPT_SORT_KEYS, default=str)).hexdigest()

    def fetch(
        self, entity: str, *, since: datetime | None = None, checkpoint: dict[str, Any] | None = None
    ) -> AsyncIterator[Page]:
        """Read ``entity`` from the vendor, page by page.

        Args:
            since: only records changed at or after this time, when the connector's manifest says
                the entity is ``incremental``; ``None`` reads everything.
            checkpoint: a ``Page.checkpoint`` of an earlier, interrupted read: continue after it.

        Raises:
            OperationNotSupported: the connector cannot read ``entity``.
            gateway.errors.VendorError: the vendor failed (retryable or not).
        """
        raise self._unsupported(f"reading {entity} from the vendor")

    # -- inbound webhooks ---------------------------------------------------------------------------
    def verify_webhook(self, headers: Mapping[str, str], body: bytes, now: float) -> InboundEvent:
        """Check a delivery to ``POST /hooks/{connection_id}`` and parse it, before it is stored.

        Runs in the API process on every delivery, so keep it cheap and synchronous: signature,
        timestamp tolerance, JSON parse. No I/O.

        Args:
            headers: the request headers (case-insensitive mapping).
            body: the raw body bytes, exactly as received (what the vendor signed).
            now: the current Unix time in seconds (for the replay window).

        Raises:
            gateway.errors.WebhookSignatureInvalid: no, a wrong or a stale signature (401).
            gateway.errors.WebhookMalformed: unreadable headers or body (400).
            OperationNotSupported: the connector receives no webhooks (the default).
        """
        raise self._unsupported("webhooks")

    async def apply_webhook(self, event: InboundEvent) -> None:
        """Bring the records cache up to date with a stored delivery (run by a worker, maybe more
        than once for one event: it must be idempotent). Fetch the object from the vendor when the
        payload is thin; upsert with the vendor's ``updated_at`` as ``remote_updated_at`` so an
        older version (a late poll, an out-of-order delivery) never overwrites a newer one.

        Raises:
            gateway.errors.VendorError: the vendor could not be asked (the worker retries).
        """
        raise self._unsupported("webhooks")

    # -- writes ---------------------------------------------------------------------------------
    def _unsupported(self, what: str) -> OperationNotSupported:
        return OperationNotSupported(f"the {self.name()} connector does not support {what}")

    async def create_product(self, body: Any) -> dict[str, Any]:
        raise self._unsupported("creating products")

    async def update_product(self, product_id: str, body: Any) -> dict[str, Any]:
        raise self._unsupported("updating products")

    async def delete_product(self, product_id: str) -> dict[str, Any]:
        raise self._unsupported("deleting products")

    async def create_category(self, body: Any) -> dict[str, Any]:
        raise self._unsupported("creating categories")

    async def create_location(self, body: Any) -> dict[str, Any]:
        raise self._unsupported("creating locations")

    async def create_customer(self, body: Any) -> dict[str, Any]:
        raise self._unsupported("creating customers")

    async def update_customer(self, customer_id: str, body: Any) -> dict[str, Any]:
        raise self._unsupported("updating customers")

    async def create_order(self, body: Any) -> dict[str, Any]:
        raise self._unsupported("creating orders")

    async def refund_order(self, order_id: str, body: Any) -> dict[str, Any]:
        raise self._unsupported("refunds")

    async def void_order(self, order_id: str, body: Any) -> dict[str, Any]:
        raise self._unsupported("voids")

    async def create_adjustment(self, body: Any) -> dict[str, Any]:
        """Accept a stock delta (``AdjustmentCreate``). A connector whose POS is reached over the
        network validates it (4xx before anything is stored), then stores it ``pending`` with its
        push job through :func:`gateway.services.adjustments.store_pending` and returns it; one
        that is its own POS (``local``) applies it at once and returns it ``applied``."""
        raise self._unsupported("inventory adjustments")

    async def push_adjustment(self, adjustment_id: str, *, final: bool = False) -> dict[str, Any]:
        """One push of a ``pending`` adjustment to the POS (the ``adjustment`` job's attempt).

        Must be safe to repeat after any failure, including a crash after the vendor acted (the
        delta is applied once), and record the verdict through
        :mod:`gateway.services.adjustments` (``settle`` / ``not_applied``). Returns the Adjustment
        after the attempt (an adjustment no longer pending as it is).

        Raises:
            gateway.services.adjustments.PushDeferred: no verdict yet (a retryable vendor
                failure on a non-``final`` attempt); the attempt is recorded, the job retries.
            NotFound: no such adjustment on this connection.
        """
        raise self._unsupported("pushing inventory adjustments")

    async def set_inventory_count(self, product_id: str, location_id: str, body: Any) -> dict[str, Any]:
        raise self._unsupported("setting inventory counts")

    # -- documents ------------------------------------------------------------------------------
    async def receipt_pdf(self, order_id: str) -> bytes:
        """The vendor's PDF receipt of one of the connection's orders, for
        ``GET /v1/connections/{id}/orders/{order_id}/receipt`` (optional: the default refuses).

        Args:
            order_id: the gateway's order id (``ord_...``); the connector resolves its ``remote_id``.

        Returns:
            The PDF document's bytes, exactly as the vendor rendered them (starting ``%PDF-``).

        Raises:
            OperationNotSupported: 422, the connector has no receipts (the default).
            gateway.errors.NotFound: no live order ``order_id`` on this connection.
            gateway.errors.VendorError: the vendor failed or answered something that is not a PDF.
        """
        raise self._unsupported("PDF receipts")
