"""Database tables (SQLModel), the system of record for the whole gateway.

Conventions: timestamps are aware UTC (SQLModel's ``UTCDateTime``: ``timestamptz`` on PostgreSQL); money and quantities that must be summed or compared in
SQL are integers in stated units (``*_milli`` = thousandths of a unit); unified objects are
stored as their rendered JSON text in ``records.data`` so reads serve bytes without re-encoding.
Every row carries ``tenant_id``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, Index, Text, UniqueConstraint, false, text
from sqlmodel import Field, SQLModel


class Tenant(SQLModel, table=True):
    """A customer of the gateway (a SaaS vendor, a store): owns keys, connections, events."""

    __tablename__ = "tenants"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    created_at: datetime


class EventCounter(SQLModel, table=True):
    """Per-tenant ``seq`` counter; its row is locked by the transaction that assigns a seq, so commit
    order equals seq order."""

    __tablename__ = "event_counters"

    tenant_id: str = Field(primary_key=True, foreign_key="tenants.id", max_length=40)
    last_seq: int = Field(default=0, sa_type=BigInteger)
    #: Bumped by every change to the tenant's webhook endpoints, in the same transaction: the
    #: outbox reads it with the seq reservation and reloads its cached endpoints when it moved.
    endpoints_version: int = Field(default=0, sa_type=BigInteger)


class ApiKey(SQLModel, table=True):
    """An API key ``tgk_<key_id>_<secret>``: stored as SHA-256 of the whole key, found by ``key_id``."""

    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=40)
    key_id: str = Field(unique=True, max_length=32)
    key_hash: str = Field(max_length=64)
    name: str = Field(default="default", max_length=200)
    created_at: datetime
    revoked_at: datetime | None = None


class ConnectionRow(SQLModel, table=True):
    """A merchant's account at a POS. ``credentials`` is ciphertext bound to (tenant, connection)."""

    __tablename__ = "connections"

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=40)
    connector: str = Field(max_length=64)
    name: str = Field(max_length=500)
    settings: str = Field(sa_column=Column(Text, nullable=False))
    credentials: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="active", max_length=20)
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


class RecordRow(SQLModel, table=True):
    """The records cache: one row per unified object (product, order, ...) of a connection.

    ``data`` is the rendered unified JSON; ``content_hash`` is SHA-256 of its entity fields so an
    unchanged re-sync writes nothing; ``remote_updated_at`` (vendor clock) keeps an older poll
    from overwriting a newer webhook-delivered version.
    """

    __tablename__ = "records"
    __table_args__ = (
        UniqueConstraint("connection_id", "entity", "remote_id", name="uq_records_remote"),
        Index("ix_records_feed", "connection_id", "entity", "updated_at", "id"),
        Index("ix_records_sku", "connection_id", "entity", "sku"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40)
    connection_id: str = Field(foreign_key="connections.id", max_length=40)
    entity: str = Field(max_length=20)
    remote_id: str = Field(max_length=200)
    sku: str | None = Field(default=None, max_length=64)
    data: str = Field(sa_column=Column(Text, nullable=False))
    raw: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    content_hash: str = Field(max_length=64)
    remote_updated_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


class EventRow(SQLModel, table=True):
    """The change log (outbox): written in the same transaction as the change it describes."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "seq", name="uq_events_seq"),
        Index("ix_events_type", "tenant_id", "type", "seq"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40)
    seq: int = Field(sa_type=BigInteger)
    type: str = Field(max_length=60)
    connection_id: str | None = Field(default=None, max_length=40)
    occurred_at: datetime
    data: str = Field(sa_column=Column(Text, nullable=False))
    changed: str = Field(sa_column=Column(Text, nullable=False))


class IdempotencyKeyRow(SQLModel, table=True):
    """A stored ``Idempotency-Key``: claimed while in flight, then holds the response to replay."""

    __tablename__ = "idempotency_keys"

    tenant_id: str = Field(primary_key=True, max_length=40)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    state: str = Field(max_length=12)  # in_flight | done
    status_code: int | None = None
    response_body: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime
    expires_at: datetime = Field(index=True)


class StockLevelRow(SQLModel, table=True):
    """On hand per (product, variant, location), in thousandths of a unit, for atomic updates.

    ``variant_id`` is ``""`` for a product without variants. ``record_id`` is the matching
    ``inventory`` record in the cache.
    """

    __tablename__ = "stock_levels"
    __table_args__ = (
        UniqueConstraint("connection_id", "product_id", "variant_id", "location_id", name="uq_stock_level"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40)
    connection_id: str = Field(foreign_key="connections.id", max_length=40)
    product_id: str = Field(max_length=40)
    variant_id: str = Field(default="", max_length=40)
    location_id: str = Field(max_length=40)
    on_hand_milli: int = Field(default=0, sa_type=BigInteger)
    low_stock_threshold_milli: int | None = Field(default=None, sa_type=BigInteger)
    updated_at: datetime


class StockMovementRow(SQLModel, table=True):
    """The stock ledger: every change of on hand is a movement with a reason and a reference."""

    __tablename__ = "stock_movements"
    __table_args__ = (Index("ix_movements_level", "connection_id", "product_id", "location_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40)
    connection_id: str = Field(foreign_key="connections.id", max_length=40)
    product_id: str = Field(max_length=40)
    variant_id: str = Field(default="", max_length=40)
    location_id: str = Field(max_length=40)
    delta_milli: int = Field(sa_type=BigInteger)
    on_hand_after_milli: int = Field(sa_type=BigInteger)
    reason: str = Field(max_length=20)
    reference: str | None = Field(default=None, max_length=200)
    order_id: str | None = Field(default=None, max_length=40)
    adjustment_id: str | None = Field(default=None, max_length=40)
    created_at: datetime


class AdjustmentRow(SQLModel, table=True):
    """A consumer's stock delta, accepted durably and pushed to the POS (status pending/applied/failed).

    ``job_id``: the ``adjustment`` job pushing it (external POS connections; ``NULL`` for the
    local engine, which applies at once). ``intent_before_milli`` / ``intent_target_milli``: for a
    POS that can only *set* a quantity (Apex), the on hand read before the push and the absolute
    quantity it sets, written (and committed) before the vendor is called: while the adjustment is
    ``pending`` with a target, the set may have landed and a retry compares the POS's count with
    them instead of applying the delta again (see ``connectors/apex/README.md``).
    """

    __tablename__ = "adjustments"

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40, index=True)
    connection_id: str = Field(foreign_key="connections.id", max_length=40)
    product_id: str = Field(max_length=40)
    variant_id: str | None = Field(default=None, max_length=40)
    location_id: str = Field(max_length=40)
    delta_milli: int = Field(sa_type=BigInteger)
    reason: str = Field(max_length=20)
    reference: str | None = Field(default=None, max_length=200)
    status: str = Field(default="pending", max_length=10)
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    applied_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    job_id: str | None = Field(default=None, max_length=40)
    intent_before_milli: int | None = Field(default=None, sa_type=BigInteger)
    intent_target_milli: int | None = Field(default=None, sa_type=BigInteger)
    link_id: str | None = Field(default=None, max_length=40)


class InventoryLinkRow(SQLModel, table=True):
    """Stock locations of two or more connections kept in one pool: a change of on hand at one
    member is pushed to the others as an adjustment (``adjustments.link_id``), matching products
    by ``match_by`` (``sku`` or ``barcode``). See :mod:`gateway.services.inventory_links`.

    ``unmatched_count`` / ``last_unmatched``: changes that could not be propagated to a member
    because no single product there carries the identifier (counted per member skipped)."""

    __tablename__ = "inventory_links"

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40, index=True)
    name: str | None = Field(default=None, max_length=200)
    match_by: str = Field(max_length=10)
    status: str = Field(default="enabled", max_length=10)
    unmatched_count: int = Field(default=0, sa_type=BigInteger)
    last_unmatched: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    last_unmatched_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class InventoryLinkMemberRow(SQLModel, table=True):
    """One (connection, location) of an inventory link. A stock location is in at most one link
    (``ux_inventory_link_members_location``)."""

    __tablename__ = "inventory_link_members"
    __table_args__ = (
        Index("ux_inventory_link_members_location", "connection_id", "location_id", unique=True),
    )

    link_id: str = Field(primary_key=True, foreign_key="inventory_links.id", max_length=40)
    connection_id: str = Field(primary_key=True, foreign_key="connections.id", max_length=40)
    location_id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40)
    position: int = 0


class WriteJournalRow(SQLModel, table=True):
    """The gateway's own stock writes to a POS, so that the POS reporting them back (the
    read-back after the write, a webhook, a poll) is not taken for an external change (echo
    suppression, see :mod:`gateway.services.journal`).

    One entry per adjustment and cached stock level (``connection_id``, ``entity`` =
    ``inventory``, ``remote_id``): ``delta_milli`` is the change of on hand the write makes, in
    thousandths. ``status``: ``open`` (written before the vendor call; a report may come) →
    ``matched`` (a report of it came and was cached without an event; ``matched_at``) or
    ``void`` (the write did not happen, or the POS was read back in a state it does not
    explain). An open entry is ignored after ``expires_at``. ``uncertain``: an earlier attempt of
    the write got no answer that rules its landing out (a timeout, a lost answer, a crash), so an
    attempt refused unsent (:func:`gateway.services.journal.withdraw`) leaves the entry open.
    """

    __tablename__ = "write_journal"
    __table_args__ = (
        Index("ix_write_journal_record", "connection_id", "entity", "remote_id", "status"),
        Index("ix_write_journal_adjustment", "adjustment_id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40)
    connection_id: str = Field(foreign_key="connections.id", max_length=40)
    entity: str = Field(max_length=20)
    remote_id: str = Field(max_length=200)
    delta_milli: int = Field(sa_type=BigInteger)
    adjustment_id: str | None = Field(default=None, max_length=40)
    status: str = Field(default="open", max_length=10)
    created_at: datetime
    expires_at: datetime
    matched_at: datetime | None = None
    uncertain: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class WriteLockRow(SQLModel, table=True):
    """A lease on a key (one POS stock row) held while a write to the POS is in flight, by any
    process on the database (:mod:`gateway.services.locks`). ``owner`` is the holder's random
    token; a lease not renewed before ``lease_until`` (its holder died) may be taken over."""

    __tablename__ = "write_locks"

    key: str = Field(primary_key=True, max_length=300)
    owner: str = Field(max_length=40)
    lease_until: datetime
    acquired_at: datetime


class ReceiptCounterRow(SQLModel, table=True):
    """The local engine's receipt numbers per connection: ``last_number`` of ``R000001``-style numbers."""

    __tablename__ = "receipt_counters"

    connection_id: str = Field(primary_key=True, foreign_key="connections.id", max_length=40)
    last_number: int = Field(default=0, sa_type=BigInteger)


class SkuIndexRow(SQLModel, table=True):
    """Product and variant identifiers of the records cache, for exact lookups: ``kind`` ``sku`` or
    ``barcode``, ``sku`` the identifier, ``variant_id`` ``""`` for a product's own. Kept by
    ``records.upsert`` / ``soft_delete``; identifiers need not be unique here."""

    __tablename__ = "sku_index"
    __table_args__ = (Index("ix_sku_index_record", "record_id"),)

    connection_id: str = Field(primary_key=True, foreign_key="connections.id", max_length=40)
    kind: str = Field(primary_key=True, default="sku", max_length=10)
    sku: str = Field(primary_key=True, max_length=64)
    record_id: str = Field(primary_key=True, max_length=40)
    variant_id: str = Field(primary_key=True, default="", max_length=40)


class JobRow(SQLModel, table=True):
    """A unit of background work (a poll due, a delivery, an adjustment to push): a row before it is
    a job. Redis (or the in-process queue) only says "look at job X"; the row says what is left to do.

    ``status``: ``queued`` → ``running`` (leased until ``lease_until``) → ``done`` | ``failed``; a
    failure with attempts left goes back to ``queued`` with a later ``run_after``. ``dedupe_key``
    is unique among unfinished jobs, so the same work is never queued twice across processes.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_due", "status", "run_after"),
        Index(
            "uq_jobs_dedupe_open",
            "dedupe_key",
            unique=True,
            sqlite_where=text("status IN ('queued', 'running')"),
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str | None = Field(default=None, max_length=40)
    kind: str = Field(max_length=40)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    dedupe_key: str | None = Field(default=None, max_length=200)
    status: str = Field(default="queued", max_length=10)
    attempts: int = 0
    max_attempts: int = 8
    run_after: datetime
    lease_until: datetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None


class SyncStateRow(SQLModel, table=True):
    """Per (connection, entity) sync state: what ``GET /v1/connections/{id}/sync`` shows.

    ``checkpoint`` (JSON) is the position of a run in progress, so an interrupted backfill resumes
    where it stopped; ``high_water`` is the newest vendor ``updated_at`` seen (for modified-since
    polls).
    """

    __tablename__ = "sync_states"

    connection_id: str = Field(primary_key=True, foreign_key="connections.id", max_length=40)
    entity: str = Field(primary_key=True, max_length=20)
    status: str = Field(default="idle", max_length=10)
    run_id: str | None = Field(default=None, max_length=40)
    mode: str | None = Field(default=None, max_length=12)
    checkpoint: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    high_water: datetime | None = None
    records: int = 0
    last_started_at: datetime | None = None
    last_success_at: datetime | None = None
    last_full_sync_at: datetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    cache_mark: str | None = Field(default=None, max_length=80)
    updated_at: datetime


class SyncPageRow(SQLModel, table=True):
    """A page the last full scan of (connection, entity) read, by its content fingerprint, with the
    vendor ids on it: when the next scan gets a page with the same fingerprint (same response
    bytes, mapping files, settings and reference maps) its records are already cached as they
    would be mapped, so it is skipped (see :mod:`gateway.services.sync`). Valid only while
    ``sync_states.cache_mark`` matches the cache."""

    __tablename__ = "sync_pages"

    connection_id: str = Field(primary_key=True, foreign_key="connections.id", max_length=40)
    entity: str = Field(primary_key=True, max_length=20)
    fingerprint: str = Field(primary_key=True, max_length=64)
    remote_ids: str = Field(sa_column=Column(Text, nullable=False))


class WebhookInboxRow(SQLModel, table=True):
    """An inbound vendor webhook delivery, stored before ``POST /hooks/{connection_id}`` answers 2xx.

    One row per (connection, vendor event id): the vendor's retries and duplicates find the row
    and add nothing. ``status``: ``received`` → ``processed`` (the cache is up to date with it)
    or ``failed`` (every attempt failed; ``last_error`` says why). ``body`` is the raw body as
    received (UTF-8 text), ``job_id`` the job that processes it.
    """

    __tablename__ = "webhook_inbox"
    __table_args__ = (
        Index("ux_webhook_inbox_event", "connection_id", "vendor_event_id", unique=True),
        Index("ix_webhook_inbox_status", "status", "received_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40)
    connection_id: str = Field(foreign_key="connections.id", max_length=40)
    vendor_event_id: str = Field(max_length=200)
    event_type: str = Field(max_length=100)
    occurred_at: datetime | None = None
    received_at: datetime
    body: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="received", max_length=10)
    job_id: str | None = Field(default=None, max_length=40)
    attempts: int = 0
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    processed_at: datetime | None = None


class WebhookEndpointRow(SQLModel, table=True):
    """A consumer's outbound webhook endpoint: where the tenant's matching events are delivered.

    ``events``: JSON list of event types or patterns (``*``, ``order.*``); ``connection_ids``:
    JSON list, or ``NULL`` for every connection. ``secret`` is the ``whsec_`` signing secret as
    ciphertext bound to (tenant, endpoint). ``status``: ``enabled`` | ``disabled``
    (``disabled_reason``: ``manual`` or ``gone``, a 410 from the receiver). ``retry_at``: when the
    head of its queue is next due (a hint for the delivery worker); ``lease_owner`` /
    ``lease_until``: the delivery worker currently sending to it (one at a time, so order holds).
    """

    __tablename__ = "webhook_endpoints"

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(foreign_key="tenants.id", index=True, max_length=40)
    url: str = Field(sa_column=Column(Text, nullable=False))
    description: str | None = Field(default=None, max_length=500)
    events: str = Field(sa_column=Column(Text, nullable=False))
    connection_ids: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    secret: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="enabled", max_length=10)
    disabled_reason: str | None = Field(default=None, max_length=20)
    retry_at: datetime | None = None
    lease_owner: str | None = Field(default=None, max_length=80)
    lease_until: datetime | None = None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None


class WebhookDeliveryRow(SQLModel, table=True):
    """One event to one endpoint, written in the same transaction as the event (the outbox).

    ``status``: ``pending`` (``next_attempt_at`` says when) → ``delivered`` (a 2xx) | ``failed``
    (the retry schedule ran out) | ``cancelled`` (the endpoint was deleted). ``seq`` is the
    event's: an endpoint's deliveries go out in ``seq`` order.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_event"),
        Index("ix_webhook_deliveries_queue", "endpoint_id", "status", "seq"),
        Index("ix_webhook_deliveries_log", "endpoint_id", "created_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=40)
    endpoint_id: str = Field(foreign_key="webhook_endpoints.id", max_length=40)
    event_id: str = Field(max_length=40)
    seq: int = Field(sa_type=BigInteger)
    event_type: str = Field(max_length=60)
    status: str = Field(default="pending", max_length=10)
    attempts: int = 0
    next_attempt_at: datetime
    last_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    delivered_at: datetime | None = None
    created_at: datetime
    updated_at: datetime


class WebhookAttemptRow(SQLModel, table=True):
    """One HTTP attempt of a delivery (the delivery log): status code or error, duration in
    milliseconds, the first 1,000 characters of the receiver's answer."""

    __tablename__ = "webhook_delivery_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "attempt"),)

    id: str = Field(primary_key=True, max_length=40)
    delivery_id: str = Field(foreign_key="webhook_deliveries.id", max_length=40)
    endpoint_id: str = Field(max_length=40)
    attempt: int
    attempted_at: datetime
    status_code: int | None = None
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    duration_ms: int
    response_body: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class SyncRunRow(SQLModel, table=True):
    """One sync run of one entity: its mode, outcome and counts (the sync history)."""

    __tablename__ = "sync_runs"
    __table_args__ = (Index("ix_sync_runs_connection", "connection_id", "entity", "started_at"),)

    id: str = Field(primary_key=True, max_length=40)
    connection_id: str = Field(foreign_key="connections.id", max_length=40)
    entity: str = Field(max_length=20)
    mode: str = Field(max_length=12)
    status: str = Field(max_length=10)
    pages: int = 0
    seen: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    started_at: datetime
    finished_at: datetime | None = None


metadata = SQLModel.metadata

records = RecordRow.__table__
events = EventRow.__table__
connections = ConnectionRow.__table__
tenants = Tenant.__table__
event_counters = EventCounter.__table__
api_keys = ApiKey.__table__
idempotency_keys = IdempotencyKeyRow.__table__
stock_levels = StockLevelRow.__table__
stock_movements = StockMovementRow.__table__
adjustments = AdjustmentRow.__table__
write_journal = WriteJournalRow.__table__
write_locks = WriteLockRow.__table__
receipt_counters = ReceiptCounterRow.__table__
sku_index = SkuIndexRow.__table__
inventory_links = InventoryLinkRow.__table__
inventory_link_members = InventoryLinkMemberRow.__table__
jobs = JobRow.__table__
sync_states = SyncStateRow.__table__
sync_runs = SyncRunRow.__table__
sync_pages = SyncPageRow.__table__
webhook_inbox = WebhookInboxRow.__table__
webhook_endpoints = WebhookEndpointRow.__table__
webhook_deliveries = WebhookDeliveryRow.__table__
webhook_attempts = WebhookAttemptRow.__table__
