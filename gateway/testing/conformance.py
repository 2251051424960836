"""The connector conformance suite: one test class every connector instantiates.

The idea is singer-sdk's ``get_tap_test_class``: the checks live here once, a connector's test
module only says what to run them against::

    class TestApexConformance(ConnectorConformance):
        connector = ApexConnector
        credentials, bad_credentials = {"api_key": "apx_sandbox_key"}, {"api_key": "apx_wrong"}
        sandbox = staticmethod(lambda: create_app(products=12, customers=7, invoices=3))
        ...

Which checks a subclass gets is decided when the class is defined, from its connector's
manifest (``capabilities``, ``credentials_schema``) and from whether it has a vendor at all
(``sandbox`` is ``None`` for ``local``, whose data lives in the gateway's own database and which
has nothing to fetch). A check that does not apply is *not generated* (its method is removed
from the subclass, its parameters come from the manifest), never skipped at run time.

Checks (method: applies when):

``test_bad_credentials_are_rejected``
    a sandbox and a ``credentials_schema`` with required members: creating a connection with
    ``bad_credentials`` raises :class:`~gateway.errors.VendorCredentialsRejected` and stores nothing.
``test_full_sync_reads_every_record``
    a sandbox and a readable entity: a full sync of every readable entity (dependency order)
    reads every record the sandbox holds (``vendor_ids``), paging to the end; at least one
    entity must need more than one page (seed the sandbox larger than ``page_size``).
``test_resync_of_unchanged_data_writes_nothing``
    a sandbox and a readable entity: a second sync, ``auto`` then ``full``, creates, updates and
    deletes nothing and emits nothing but ``connection.sync_completed``.
``test_record_deleted_at_vendor_is_soft_deleted[entity]``
    a sandbox and ``entity`` in products/customers readable: after ``delete_at_vendor`` the
    next full sync soft-deletes that record (``deleted_at``, ``<noun>.deleted`` event).
``test_cached_records_are_valid``
    always: after a full sync (with a sandbox) and the sample creates (``write: create``),
    every cached record validates against ``gateway.model.ENTITY_MODELS`` and ``schemas/``.
``test_create_round_trips[entity]``
    ``"create"`` in the manifest's ``write`` of products/customers: the returned record carries
    the sample's values, equals the cached one, is valid; with a sandbox the next full sync
    reads it back unchanged (no create, no update).
``test_adjustment_applies_once``
    ``"adjust"`` in inventory's ``write``: one ``create_adjustment`` call (``pending`` with its
    push job, or ``applied`` at once for a connector that is its own POS), then its push job run
    as a worker does, moves on hand by its delta once; the same request twice through the API
    with one ``Idempotency-Key`` answers 202 twice (the second is the replay) and applies once;
    with a sandbox a full sync confirms the vendor's count.
``test_sync_survives_rate_limits_and_5xx``
    a sandbox and a readable entity: with the sandbox answering bursts of 429 (``Retry-After``)
    and random 503s (``fault_knobs``, set through ``/_sandbox/faults``), the full sync still
    succeeds and reads every record. Runs live, never from a cassette.

Webhook checks apply when there is a sandbox and the manifest declares top-level ``webhooks``
(AI POS; never apex or local). Each first connects, runs a full sync (so a delivery's references
resolve through the cache) and asks :meth:`ConnectorConformance.webhook_deliveries` for real
signed deliveries out of the sandbox; every delivery goes through the gateway API
(``POST /hooks/{connection_id}``, no API key) and stored deliveries are applied by running their
``webhook`` jobs (:meth:`Harness.run_webhook_jobs`), as a worker would.

``test_webhook_signature_is_verified``
    a genuine delivery answers 200 and is stored (``received``, not a duplicate); the next one
    with a tampered body, signed with another secret, without its signature header
    (``webhook_signature_header``), signed ``tolerance_seconds`` (manifest) + 60 s in the past or
    in the future answers 401 ``webhook_signature_invalid``; with an unreadable signature 400
    ``webhook_malformed`` or 401; a correctly signed body that is not an event 400
    ``webhook_malformed``; every refusal is problem+json and stores nothing (no inbox row, no
    job). Signed half the window ago it is accepted, and both apply.
``test_webhook_duplicates_change_nothing``
    every delivery sent twice in a row (and once more after processing): the second answer is
    ``duplicate: true`` with the first one's inbox id; one inbox row per event id, processed in
    one attempt; the cache holds each changed record as its newest delivery says (``expect``) and
    the change log has exactly one event per delivery (``event``), in delivery order.
``test_webhook_reordering_keeps_newest``
    the two deliveries changing one record, sent and processed newest first: the cache holds the
    newest version and one event comes of it; the older one, processed after, changes nothing and
    emits nothing.
``test_webhook_replay_changes_nothing``
    after every delivery is processed: an old delivery re-sent with a fresh signature is a
    duplicate; every delivery replayed under a new event id (signed anew) is stored and processed
    but changes no cached record and emits nothing (the version guard, not the inbox, stops it);
    a full sync afterwards finds the records the webhooks brought already up to date (no write,
    no event for them).

HTTP recording: when ``cassette_dir`` is set, every check but the fault one runs inside a vcrpy
cassette ``<cassette_dir>/<check>[-<param>].yaml`` (``X-API-Key``/``Authorization``/``User-Agent`` filtered,
``date``/``server`` response headers dropped, matched on method + path + query + body,
``record_mode="none"``: an unrecorded request fails). ``TILLGATE_RECORD_CASSETTES=1`` records
them again (``record_mode="all"``) from the in-process sandbox: vcrpy patches
``httpx.ASGITransport`` too, so no server is needed and the base URL is a fixed fake host.
The sandbox app is built in replay too (it is cheap and seeded), as the source of the expected
records; the gateway's own API traffic (``http://tillgate.test``) is never recorded.
The webhook checks are recorded too: their vendor traffic is the connect, the full syncs and the
credential check of the ``webhook_secret`` update. The deliveries themselves are made live by
the sandbox on every run (they are signed with the current time, and sent to the gateway's host,
which is never recorded), so a subclass must make its sandbox's changes deterministic (fixed
times, seeded ids) for the syncs after them to replay.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError
from referencing import Registry, Resource
from sqlalchemy import func, select

from gateway import jsonutil
from gateway.crypto import CredentialCipher
from gateway.errors import PROBLEM_CONTENT_TYPE, VendorCredentialsRejected
from gateway.model import ENTITY_MODELS, AdjustmentCreate, ConnectionCreate, CustomerCreate, ProductCreate
from gateway.sdk.connector import Connector
from gateway.sdk.http import BreakerPolicy, RetryPolicy
from gateway.sdk.registry import ConnectorRegistry
from gateway.services.connections import ConnectionService
from gateway.services.records import EVENT_NOUN
from gateway.services.sync import ENTITY_ORDER, RunResult, SyncEngine
from gateway.storage import tables as t
from gateway.storage.db import Database

__all__ = ["RECORD_ENV", "ConnectorConformance", "Harness", "WebhookDelivery", "cached_records", "sandbox_client_overrides",
           "schema_registry", "validate_record"]

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
#: the JSON Schema file of each entity's records
ENTITY_SCHEMAS = {
    "products": "product.json",
    "categories": "category.json",
    "locations": "location.json",
    "customers": "customer.json",
    "orders": "order.json",
    "inventory": "inventory-level.json",
}
#: set to 1 to record the cassettes again (``make cassettes``)
RECORD_ENV = "TILLGATE_RECORD_CASSETTES"
#: entities whose deletion at the vendor the suite exercises (``delete_at_vendor`` must handle them)
DELETE_ENTITIES = ("products", "customers")
#: the write bodies (request models) of the create round trips
CREATE_MODELS = {"products": ProductCreate, "customers": CustomerCreate}
API_BASE_URL = "http://tillgate.test"
API_HOST = "tillgate.test"
#: the replay window assumed when a manifest's ``webhooks`` gives no ``tolerance_seconds``
DEFAULT_WEBHOOK_TOLERANCE = 300
#: the checks generated for a connector whose manifest declares ``webhooks`` (and has a sandbox)
WEBHOOK_CHECKS = (
    "test_webhook_signature_is_verified",
    "test_webhook_duplicates_change_nothing",
    "test_webhook_reordering_keeps_newest",
    "test_webhook_replay_changes_nothing",
)


@dataclass(frozen=True)
class WebhookDelivery:
    """One signed vendor delivery, as the sandbox POSTs it to ``/hooks/{connection_id}``.

    Attributes:
        event_id: the vendor's event id (what the inbox deduplicates on).
        type: the vendor's event type (one of the manifest's ``webhooks.events``).
        body: the raw body, byte for byte as signed.
        headers: the request headers the vendor sends (signature, event id, content type).
        entity: the cache entity the delivery changes (``products``, ``orders``, ...).
        remote_id: the remote id of the record it changes.
        event: the gateway event applying it emits when deliveries are applied in vendor order
            (``None``: none).
        expect: fields of the unified record once this delivery is the newest one applied.
    """

    event_id: str
    type: str
    body: bytes
    headers: dict[str, str]
    entity: str
    remote_id: str
    event: str | None
    expect: dict[str, Any] = field(default_factory=dict)


@cache
def schema_registry() -> Registry:
    """Every ``schemas/*.json`` by its ``$id`` (they refer to each other relatively)."""
    resources = []
    for path in sorted(SCHEMAS_DIR.glob("*.json")):
        contents = json.loads(path.read_text(encoding="utf-8"))
        resources.append((contents["$id"], Resource.from_contents(contents)))
    return Registry().with_resources(resources)


@cache
def _validator(entity: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS_DIR / ENTITY_SCHEMAS[entity]).read_text(encoding="utf-8"))
    return Draft202012Validator(schema, registry=schema_registry())


def validate_record(entity: str, record: dict[str, Any]) -> None:
    """Check one cached record (JSON-ready dict) against its pydantic model and its JSON Schema.

    Raises:
        AssertionError: naming the entity, the record's id and every schema error.
        pydantic.ValidationError: the model refuses it.
    """
    ENTITY_MODELS[entity].model_validate(record)
    errors = sorted(_validator(entity).iter_errors(record), key=lambda e: list(e.absolute_path))
    assert not errors, f"{entity} {record.get('id')}: " + "; ".join(
        f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors
    )


async def _no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def sandbox_client_overrides(transport: httpx.AsyncBaseTransport, *, retry: RetryPolicy | None = None
                             ) -> dict[str, Any]:
    """``client_overrides`` (:class:`~gateway.sdk.remote.RemoteConnector`) for a connector that
    talks to a sandbox in process: ``transport`` (e.g. ``httpx.ASGITransport(app=sandbox)``), no
    wait between attempts (``sleep`` only yields), no client-side rate limit, ``retry`` (default:
    15 instant, generous attempts) and a circuit breaker that does not open in a test.

    Returns:
        ``{"transport", "sleep", "rate_limit", "retry", "breaker"}``, a new dict each call.
    """
    return {
        "transport": transport,
        "sleep": _no_sleep,
        "rate_limit": None,
        "retry": retry or RetryPolicy(attempts=15, max_total=600, backoff=0.001, backoff_max=0.01, jitter=0),
        "breaker": BreakerPolicy(threshold=1000),
    }


async def cached_records(db: Database, connection_id: str, entity: str, *,
                         deleted: bool = False) -> dict[str, dict[str, Any]]:
    """Remote id → cached record (the JSON-ready dict) of the connection's ``entity`` records:
    the live ones, or with ``deleted=True`` the soft-deleted ones."""
    gone = t.records.c.deleted_at.is_not(None) if deleted else t.records.c.deleted_at.is_(None)
    async with db.read() as conn:
        rows = (await conn.execute(select(t.records.c.remote_id, t.records.c.data).where(
            t.records.c.connection_id == connection_id, t.records.c.entity == entity, gone))).all()
    return {row.remote_id: jsonutil.loads(row.data) for row in rows}


class Harness:
    """One check's world: a database, a tenant, a sandbox app (or none) and one connection."""

    def __init__(self, suite: ConnectorConformance, db: Database, tenant: tuple[str, str]) -> None:
        self.suite = suite
        self.db = db
        self.tenant_id, self.api_key = tenant
        factory = type(suite).sandbox
        self.app: Any = None if factory is None else factory()
        self.connector_class, self.settings = suite.wire(self.app)
        self.registry = ConnectorRegistry([self.connector_class])
        self.cipher = CredentialCipher([os.urandom(32)])
        self.service = ConnectionService(db, self.registry, self.cipher)
        self.connection_id = ""
        self.name = self.connector_class.manifest["name"]
        self._services: Any = None

    @property
    def capabilities(self) -> dict[str, dict[str, Any]]:
        return self.connector_class.manifest.get("capabilities", {})

    async def connect(self, credentials: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create the connection (the connector's ``check`` runs against the vendor)."""
        connection = await self.service.create(self.tenant_id, ConnectionCreate(
            connector=self.name, name="Conformance",
            credentials=self.suite.credentials if credentials is None else credentials, settings=self.settings))
        self.connection_id = connection["id"]
        return connection

    async def connector(self) -> Connector:
        """A fresh connector instance on the connection (one per request, as the API does)."""
        return await self.service.connector_for(self.tenant_id, self.connection_id)

    def readable(self) -> list[str]:
        return [e for e in ENTITY_ORDER if self.capabilities.get(e, {}).get("read")]

    async def sync(self, mode: str = "full") -> dict[str, RunResult]:
        """Run ``mode`` on every readable entity in dependency order; every run must succeed."""
        engine = SyncEngine(self.db, await self.connector())
        results = {entity: await engine.run(entity, mode=mode) for entity in engine.entities()}
        failed = {e: r.error for e, r in results.items() if r.status != "succeeded"}
        assert not failed, failed
        return results

    async def cached(self, entity: str, *, deleted: bool = False) -> dict[str, dict[str, Any]]:
        """remote id -> cached record of ``entity`` (live ones; ``deleted=True``: deleted ones)."""
        return await cached_records(self.db, self.connection_id, entity, deleted=deleted)

    async def event_types(self) -> list[str]:
        """Types of the connection's events, in ``seq`` order."""
        async with self.db.read() as conn:
            rows = (await conn.execute(select(t.events.c.type).where(
                t.events.c.connection_id == self.connection_id).order_by(t.events.c.seq))).all()
        return [row.type for row in rows]

    async def adjustment(self, adjustment_id: str) -> dict[str, Any]:
        """One adjustment of the connection as the API shows it."""
        from gateway.services.adjustments import get_adjustment

        async with self.db.read() as conn:
            return await get_adjustment(conn, tenant_id=self.tenant_id, connection_id=self.connection_id,
                                        adjustment_id=adjustment_id)

    async def connection_count(self) -> int:
        async with self.db.read() as conn:
            return (await conn.execute(select(func.count()).select_from(t.connections).where(
                t.connections.c.tenant_id == self.tenant_id))).scalar_one()

    async def populate(self) -> dict[str, dict[str, Any]]:
        """Full sync (with a vendor), then one sample create per entity whose manifest says
        ``write: create``; returns the created records by entity."""
        if self.app is not None:
            await self.sync()
        created = {}
        for entity in creatable_entities(self.connector_class):
            body = CREATE_MODELS[entity].model_validate(self.suite.sample(entity))
            created[entity] = await getattr(await self.connector(), f"create_{entity[:-1]}")(body)
        return created

    def services(self) -> Any:
        """The gateway's :class:`~gateway.api.deps.Services` on this database, registry and cipher
        (built once per harness; no dispatcher: jobs run through :meth:`run_webhook_jobs`)."""
        if self._services is None:
            from gateway.api.deps import Services
            from gateway.settings import Settings

            settings = Settings(database_url=self.db.url,
                                secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()],
                                api_rate_limit="100000/minute")
            services = Services.build(settings, db=self.db, registry=self.registry)
            services.cipher = self.cipher  # the connection was created with this one
            services.connections = ConnectionService(self.db, self.registry, self.cipher)
            self._services = services
        return self._services

    @contextmanager
    def api(self) -> Iterator[Callable[..., httpx.AsyncClient]]:
        """A factory of ``httpx.AsyncClient`` on the gateway API (tenant key, this registry);
        ``client(authenticated=False)`` sends no API key (as a vendor calling ``/hooks`` does)."""
        from gateway.api.app import create_app

        services = self.services()
        app = create_app(services.settings, services=services)

        def client(*, authenticated: bool = True) -> httpx.AsyncClient:
            headers = {"Authorization": f"Bearer {self.api_key}"} if authenticated else {}
            return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=API_BASE_URL, headers=headers)

        yield client

    # -- inbound webhooks ------------------------------------------------------------------------
    @property
    def hook_url(self) -> str:
        """The URL the vendor is told to deliver this connection's webhooks to."""
        return f"{API_BASE_URL}/hooks/{self.connection_id}"

    @property
    def webhook_tolerance(self) -> int:
        """The manifest's ``webhooks.tolerance_seconds`` (the replay window of signed timestamps)."""
        return int(self.connector_class.manifest.get("webhooks", {}).get("tolerance_seconds",
                                                                          DEFAULT_WEBHOOK_TOLERANCE))

    async def post_webhook(self, http: httpx.AsyncClient, delivery: WebhookDelivery) -> httpx.Response:
        """POST ``delivery`` (its body and headers as they are) to this connection's ``/hooks`` URL."""
        return await http.post(f"/hooks/{self.connection_id}", content=delivery.body, headers=delivery.headers)

    async def inbox(self) -> list[Any]:
        """The connection's ``webhook_inbox`` rows, oldest first."""
        async with self.db.read() as conn:
            return list((await conn.execute(select(t.webhook_inbox).where(
                t.webhook_inbox.c.connection_id == self.connection_id).order_by(
                t.webhook_inbox.c.received_at, t.webhook_inbox.c.id))).all())

    async def webhook_job_count(self) -> int:
        """How many ``webhook`` jobs the tenant has (one per stored delivery)."""
        from gateway.services.inbox import JOB_KIND

        async with self.db.read() as conn:
            return (await conn.execute(select(func.count()).select_from(t.jobs).where(
                t.jobs.c.tenant_id == self.tenant_id, t.jobs.c.kind == JOB_KIND))).scalar_one()

    async def run_webhook_jobs(self) -> int:
        """Run the job of every stored, unprocessed delivery of the connection, oldest first, as a
        worker does (:func:`gateway.workers.dispatch.execute`); each must finish. Returns how many ran."""
        import gateway.workers.tasks  # noqa: F401 - registers the webhook job kind
        from gateway.workers.dispatch import WorkerContext, execute

        context = WorkerContext(db=self.db, services=self.services())
        pending = [row for row in await self.inbox() if row.status == "received"]
        for row in pending:
            outcome = await execute(context, row.job_id)
            assert outcome == "done", (row.vendor_event_id, row.event_type, outcome, (await self.inbox()))
        return len(pending)

    async def run_adjustment_jobs(self) -> int:
        """Run the push job of every ``pending`` adjustment of the connection, oldest first, as a
        worker does; each must finish. Returns how many ran."""
        import gateway.workers.tasks  # noqa: F401 - registers the adjustment job kind
        from gateway.workers.dispatch import WorkerContext, execute

        context = WorkerContext(db=self.db, services=self.services())
        async with self.db.read() as conn:
            pending = (await conn.execute(select(t.adjustments.c.id, t.adjustments.c.job_id).where(
                t.adjustments.c.connection_id == self.connection_id, t.adjustments.c.status == "pending")
                .order_by(t.adjustments.c.created_at, t.adjustments.c.id))).all()
        for row in pending:
            outcome = await execute(context, row.job_id)
            assert outcome == "done", (row.id, outcome)
        return len(pending)

    async def records_of(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """``(entity, remote id)`` -> the cached live record, for each of ``keys`` (each must be cached)."""
        found = {}
        for entity, remote_id in keys:
            cached = await self.cached(entity)
            assert remote_id in cached, f"{entity} {remote_id} is not cached"
            found[(entity, remote_id)] = cached[remote_id]
        return found

    async def events(self) -> list[tuple[str, str | None]]:
        """``(type, remote id of the record in it)`` of the connection's events, in ``seq`` order."""
        async with self.db.read() as conn:
            rows = (await conn.execute(select(t.events.c.type, t.events.c.data).where(
                t.events.c.connection_id == self.connection_id).order_by(t.events.c.seq))).all()
        return [(row.type, jsonutil.loads(row.data).get("remote_id")) for row in rows]


def creatable_entities(connector: type[Connector]) -> list[str]:
    """Entities of :data:`CREATE_MODELS` whose manifest ``write`` lists ``create``."""
    caps = connector.manifest.get("capabilities", {})
    return [e for e in CREATE_MODELS if "create" in caps.get(e, {}).get("write", [])]


def _needs_credentials(connector: type[Connector]) -> bool:
    return bool(connector.manifest.get("credentials_schema", {}).get("required"))


def _readable(connector: type[Connector]) -> list[str]:
    caps = connector.manifest.get("capabilities", {})
    return [e for e in ENTITY_ORDER if caps.get(e, {}).get("read")]


def _receives_webhooks(connector: type[Connector]) -> bool:
    return bool(connector.manifest.get("webhooks"))


def _tampered(body: bytes) -> bytes:
    """``body`` with one byte changed after signing: its last digit (still the same JSON shape),
    else a trailing space."""
    for index in range(len(body) - 1, -1, -1):
        if body[index:index + 1].isdigit():
            digit = b"1" if body[index:index + 1] == b"0" else b"0"
            return body[:index] + digit + body[index + 1:]
    return body + b" "


def _diff(before: dict[Any, Any], after: dict[Any, Any]) -> dict[Any, tuple[Any, Any]]:
    """Keys whose values differ between two dicts: key -> (before, after)."""
    return {k: (before.get(k), after.get(k)) for k in before.keys() | after.keys() if before.get(k) != after.get(k)}


def _matches(record: dict[str, Any], expect: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields of ``expect`` the record does not hold: name -> (cached, expected)."""
    return {k: (record.get(k), v) for k, v in expect.items() if record.get(k) != v}


def _live(function: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a check that runs against the live in-process sandbox, never from a cassette."""
    function._conformance_live = True  # type: ignore[attr-defined]
    return function


class ConnectorConformance:
    """Base class of a connector's conformance tests (subclass it as ``Test<Vendor>Conformance``).

    Class attributes a subclass sets:

    ``connector``
        the :class:`Connector` subclass under test.
    ``credentials`` / ``bad_credentials``
        valid credentials, and ones the vendor refuses (required when the manifest's
        ``credentials_schema`` requires members).
    ``settings``
        connection settings (e.g. a small ``page_size`` so pagination is exercised).
    ``sandbox``
        ``staticmethod`` returning a fresh, deterministically seeded sandbox ASGI app, or ``None``
        when the connector has no vendor (``local``).
    ``base_url`` / ``base_url_setting``
        the fixed fake URL the connector is pointed at (its host is never resolved) and the
        settings key holding it.
    ``cassette_dir``
        where the vcrpy cassettes live, or ``None`` for live in-process runs only.
    ``samples``
        create bodies by entity (defaults in :attr:`default_samples`).
    ``fault_knobs``
        what ``/_sandbox/faults`` gets for the rate-limit/5xx check.
    ``webhook_signature_header``
        the header carrying the vendor's signature (required when the manifest declares
        ``webhooks``): the signature check sends a delivery without it.

    Hooks a subclass with a sandbox overrides: :meth:`vendor_ids`, :meth:`delete_at_vendor`,
    and :meth:`wire` when its connector is not configured through ``client_overrides``; when its
    manifest declares ``webhooks``, also :meth:`webhook_deliveries` and :meth:`sign_webhook`.
    """

    connector: ClassVar[type[Connector]]
    credentials: ClassVar[dict[str, Any]] = {}
    bad_credentials: ClassVar[dict[str, Any] | None] = None
    settings: ClassVar[dict[str, Any]] = {}
    sandbox: ClassVar[Callable[[], Any] | None] = None
    base_url: ClassVar[str | None] = None
    base_url_setting: ClassVar[str] = "base_url"
    cassette_dir: ClassVar[Path | None] = None
    samples: ClassVar[dict[str, dict[str, Any]]] = {}
    default_samples: ClassVar[dict[str, dict[str, Any]]] = {
        "products": {"name": "Conformance Latte", "price": "4.50", "barcode": "CONF-0001"},
        "customers": {"name": "Conformance Customer", "email": "conformance@example.com", "phone": "+15550100"},
    }
    fault_knobs: ClassVar[dict[str, Any]] = {
        "seed": 7, "error_rate": 0.25, "error_status": 503, "error_retry_after": 1,
        "rate_limit_every": 4, "rate_limit_burst": 2, "rate_limit_retry_after": 1,
    }
    #: delta of the adjustment checks (whole units: every POS takes them)
    adjust_delta: ClassVar[int] = 3
    webhook_signature_header: ClassVar[str | None] = None
    #: top-level members of JSON request bodies whose values differ on every run (a vendor
    #: reference built from a gateway id, e.g. TenantPOS's ``reference``): written to cassettes
    #: and matched as ``"<volatile>"``, so a replay still matches method, path, query and the rest
    volatile_body_fields: ClassVar[tuple[str, ...]] = ()

    # -- which checks exist ----------------------------------------------------------------------
    @classmethod
    def applicable_checks(cls) -> dict[str, list[str] | None]:
        """Check name -> its parameter values (``None``: not parametrized), for the checks that
        apply to ``cls.connector``. Built from the manifest and ``sandbox`` only."""
        connector = cls.connector
        vendor = cls.sandbox is not None
        readable = _readable(connector)
        caps = connector.manifest.get("capabilities", {})
        checks: dict[str, list[str] | None] = {"test_cached_records_are_valid": None}
        if vendor and _needs_credentials(connector):
            checks["test_bad_credentials_are_rejected"] = None
        if vendor and readable:
            checks["test_full_sync_reads_every_record"] = None
            checks["test_resync_of_unchanged_data_writes_nothing"] = None
            checks["test_sync_survives_rate_limits_and_5xx"] = None
            deletable = [e for e in DELETE_ENTITIES if e in readable]
            if deletable:
                checks["test_record_deleted_at_vendor_is_soft_deleted"] = deletable
        creatable = creatable_entities(connector)
        if creatable:
            checks["test_create_round_trips"] = creatable
        if "adjust" in caps.get("inventory", {}).get("write", []):
            checks["test_adjustment_applies_once"] = None
        if vendor and _receives_webhooks(connector):
            checks.update(dict.fromkeys(WEBHOOK_CHECKS))
        return checks

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        connector = getattr(cls, "connector", None)
        if not (isinstance(connector, type) and issubclass(connector, Connector)):
            raise TypeError(f"{cls.__name__}: set connector to the Connector class under test")
        if cls.sandbox is not None and _needs_credentials(cls.connector) and cls.bad_credentials is None:
            raise TypeError(f"{cls.__name__}: {cls.connector.name()} needs credentials; set bad_credentials")
        if cls.sandbox is not None and cls.base_url is None:
            raise TypeError(f"{cls.__name__}: a sandbox needs base_url (a fixed fake URL)")
        if cls.sandbox is not None and _receives_webhooks(cls.connector) and not cls.webhook_signature_header:
            raise TypeError(f"{cls.__name__}: {cls.connector.name()} receives webhooks; set webhook_signature_header")
        applicable = cls.applicable_checks()
        for name in dir(ConnectorConformance):
            if name.startswith("test_") and name not in applicable:
                setattr(cls, name, None)  # not generated: pytest collects only callables

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrize ``entity`` from the manifest (see :meth:`applicable_checks`)."""
        if "entity" in metafunc.fixturenames:
            values = type(self).applicable_checks()[metafunc.function.__name__]
            metafunc.parametrize("entity", values)

    # -- hooks -------------------------------------------------------------------------------------
    def wire(self, app: Any) -> tuple[type[Connector], dict[str, Any]]:
        """The connector class and settings to use against ``app`` (``None``: no vendor).

        Default: a subclass whose ``client_overrides`` put the sandbox behind
        ``httpx.ASGITransport`` with instant, generous retries and no client-side rate limit, and
        settings with ``base_url_setting`` = ``base_url``.
        """
        if app is None:
            return self.connector, dict(self.settings)
        overrides = sandbox_client_overrides(httpx.ASGITransport(app=app))
        wired = type(f"Conformance{self.connector.__name__}", (self.connector,), {"client_overrides": overrides})
        return wired, {**self.settings, self.base_url_setting: self.base_url}

    def vendor_ids(self, app: Any, entity: str) -> set[str]:
        """The remote ids of every ``entity`` record the sandbox ``app`` holds."""
        raise NotImplementedError(f"{type(self).__name__} must implement vendor_ids")

    def delete_at_vendor(self, app: Any, entity: str) -> str:
        """Delete one ``entity`` record inside the sandbox ``app``; return its remote id."""
        raise NotImplementedError(f"{type(self).__name__} must implement delete_at_vendor")

    async def webhook_deliveries(self, harness: Harness) -> list[WebhookDelivery]:
        """Real signed deliveries out of the sandbox ``harness.app``, in the order the vendor made them.

        Called after ``harness.connect()`` and a full sync. It must have the sandbox deliver to
        :attr:`Harness.hook_url` (registered the way the vendor's dashboard does) and give the
        connection the signing secret (as a user would, ``PATCH /v1/connections/{id}`` through
        ``harness.api()``); then make changes at the sandbox and return what the sandbox would POST
        for them, nothing sent to the gateway yet. The changes must include one record changed
        twice (two deliveries with the same ``entity`` and ``remote_id`` whose ``expect`` differ)
        and at least three deliveries in all; each delivery's ``event`` and ``expect`` say what
        applying it does. Deliveries that need the vendor's API to apply (thin payloads) must
        replay from the check's cassette like the rest of its vendor traffic.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement webhook_deliveries")

    def sign_webhook(self, harness: Harness, delivery: WebhookDelivery, *, timestamp: int,
                     event_id: str | None = None, wrong_secret: bool = False) -> WebhookDelivery:
        """``delivery`` signed anew as the vendor would sign it at unix time ``timestamp``.

        ``event_id``: the same change under another event id (the body and headers that carry
        the id rewritten); ``wrong_secret``: signed with a secret other than the connection's.
        The body is signed as it is in ``delivery`` (the checks hand in altered bodies too).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement sign_webhook")

    def sample(self, entity: str) -> dict[str, Any]:
        """The create body of ``entity`` (``samples`` over ``default_samples``)."""
        return {**self.default_samples.get(entity, {}), **self.samples.get(entity, {})}

    # -- fixtures ----------------------------------------------------------------------------------
    @pytest.fixture
    async def harness(self, request: pytest.FixtureRequest, db: Database, tenant: tuple[str, str]) -> AsyncIterator[Harness]:
        """A :class:`Harness` inside the check's cassette (when recording/replaying applies)."""
        harness = Harness(self, db, tenant)
        with self._cassette(request):
            yield harness

    @contextmanager
    def _cassette(self, request: pytest.FixtureRequest) -> Iterator[None]:
        if self.cassette_dir is None or self.sandbox is None or getattr(request.function, "_conformance_live", False):
            yield
            return
        import vcr

        params = getattr(request.node, "callspec", None)
        extra = [str(v) for k, v in sorted(params.params.items()) if k == "entity"] if params else []
        name = "-".join([request.node.originalname.removeprefix("test_"), *extra]) + ".yaml"
        recorder = vcr.VCR(
            cassette_library_dir=str(self.cassette_dir),
            record_mode="all" if os.environ.get(RECORD_ENV) == "1" else "none",
            match_on=["method", "path", "query", "body"],
            filter_headers=["x-api-key", "authorization", "user-agent"],
            before_record_response=_scrub_response,
            ignore_hosts=[API_HOST],
            decode_compressed_response=True,
            before_record_request=_volatile_scrubber(self.volatile_body_fields),
        )
        with recorder.use_cassette(name):
            yield

    # -- checks ------------------------------------------------------------------------------------
    async def test_bad_credentials_are_rejected(self, harness: Harness) -> None:
        before = await harness.connection_count()
        with pytest.raises(VendorCredentialsRejected):
            await harness.connect(self.bad_credentials)
        assert await harness.connection_count() == before
        await harness.connect()  # and the good ones pass the same check

    async def test_full_sync_reads_every_record(self, harness: Harness) -> None:
        await harness.connect()
        results = await harness.sync("full")
        for entity, result in results.items():
            expected = self.vendor_ids(harness.app, entity)
            assert set(await harness.cached(entity)) == expected, entity
            assert (result.seen, result.created) == (len(expected), len(expected)), (entity, result)
        assert max(r.pages for r in results.values()) > 1, "seed the sandbox larger than one page"

    async def test_resync_of_unchanged_data_writes_nothing(self, harness: Harness) -> None:
        await harness.connect()
        await harness.sync("full")
        events = await harness.event_types()
        for mode in ("auto", "full"):
            again = await harness.sync(mode)
            assert all((r.created, r.updated, r.deleted) == (0, 0, 0) for r in again.values()), again
            assert all(r.unchanged == r.seen for r in again.values()), again
        new = (await harness.event_types())[len(events):]
        assert new == ["connection.sync_completed"] * (2 * len(harness.readable())), new

    async def test_record_deleted_at_vendor_is_soft_deleted(self, harness: Harness, entity: str) -> None:
        await harness.connect()
        await harness.sync("full")
        remote_id = self.delete_at_vendor(harness.app, entity)
        live = await harness.cached(entity)
        assert remote_id in live
        results = await harness.sync("full")
        assert results[entity].deleted == 1, results[entity]
        gone = await harness.cached(entity, deleted=True)
        assert remote_id in gone and gone[remote_id]["deleted_at"], gone
        assert gone[remote_id]["id"] == live[remote_id]["id"]
        assert set(await harness.cached(entity)) == self.vendor_ids(harness.app, entity)
        assert f"{EVENT_NOUN[entity]}.deleted" in await harness.event_types()

    async def test_cached_records_are_valid(self, harness: Harness) -> None:
        await harness.connect()
        await harness.populate()
        total, problems = 0, []
        for entity in ENTITY_SCHEMAS:
            for record in (await harness.cached(entity)).values():
                total += 1
                try:
                    validate_record(entity, record)
                except AssertionError as exc:  # names the record already
                    problems.append(str(exc))
                except ValidationError as exc:
                    problems.append(f"{entity} {record.get('id')}: {exc}")
        assert total > 0, "nothing was cached to validate"
        assert not problems, f"{len(problems)} of {total} cached records are invalid:\n" + "\n".join(problems[:20])

    async def test_create_round_trips(self, harness: Harness, entity: str) -> None:
        await harness.connect()
        if harness.app is not None:
            await harness.sync("full")
        sample = self.sample(entity)
        body = CREATE_MODELS[entity].model_validate(sample)
        record = await getattr(await harness.connector(), f"create_{entity[:-1]}")(body)
        validate_record(entity, record)
        for key, value in sample.items():
            assert record[key] == value, (key, record[key], value)
        assert (await harness.cached(entity))[record["remote_id"]] == record
        if harness.app is not None:  # the vendor now holds it: the next full sync reads it unchanged
            result = (await harness.sync("full"))[entity]
            assert (result.created, result.updated, result.deleted) == (0, 0, 0), result
            assert (await harness.cached(entity))[record["remote_id"]] == record

    async def test_adjustment_applies_once(self, harness: Harness) -> None:
        await harness.connect()
        await harness.populate()
        levels = await harness.cached("inventory")
        assert levels, "no stock level to adjust"
        remote_id = sorted(levels)[0]
        level = levels[remote_id]
        start = Decimal(level["on_hand"])
        delta = self.adjust_delta

        adjustment = await (await harness.connector()).create_adjustment(AdjustmentCreate(
            product_id=level["product_id"], location_id=level["location_id"], delta=str(delta),
            reason="restock", reference="conformance-1"))
        assert adjustment["status"] in ("pending", "applied"), adjustment
        await harness.run_adjustment_jobs()
        assert (await harness.adjustment(adjustment["id"]))["status"] == "applied"
        assert Decimal((await harness.cached("inventory"))[remote_id]["on_hand"]) == start + delta

        url = f"/v1/connections/{harness.connection_id}/inventory/adjustments"
        body = {"product_id": level["product_id"], "location_id": level["location_id"], "delta": str(delta),
                "reason": "restock", "reference": "conformance-2"}
        with harness.api() as api:
            async with api() as http:
                first = await http.post(url, json=body, headers={"Idempotency-Key": "conformance-adjust"})
                again = await http.post(url, json=body, headers={"Idempotency-Key": "conformance-adjust"})
        assert first.status_code == 202, first.text
        assert again.status_code == 202 and again.json() == first.json(), again.text
        assert again.headers.get("idempotent-replayed") == "true"
        assert first.json()["status"] in ("pending", "applied")
        await harness.run_adjustment_jobs()
        assert (await harness.adjustment(first.json()["id"]))["status"] == "applied"
        assert await harness.run_adjustment_jobs() == 0  # nothing left to push, nothing pushed twice
        assert Decimal((await harness.cached("inventory"))[remote_id]["on_hand"]) == start + 2 * delta
        async with harness.db.read() as conn:
            applied = (await conn.execute(select(func.count()).select_from(t.adjustments).where(
                t.adjustments.c.connection_id == harness.connection_id))).scalar_one()
        assert applied == 2
        if harness.app is not None:  # the vendor's own count agrees
            await harness.sync("full")
            assert Decimal((await harness.cached("inventory"))[remote_id]["on_hand"]) == start + 2 * delta

    @_live
    async def test_sync_survives_rate_limits_and_5xx(self, harness: Harness) -> None:
        await harness.connect()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=harness.app), base_url="http://sandbox") as admin:
            answer = await admin.post("/_sandbox/faults", json=self.fault_knobs)
            assert answer.status_code == 200, answer.text
            await harness.sync("full")
            faulted = (await admin.get("/_sandbox/state")).json()["faulted"]
        assert faulted.get("429", 0) > 0 and faulted.get("503", 0) > 0, faulted
        for entity in harness.readable():
            assert set(await harness.cached(entity)) == self.vendor_ids(harness.app, entity), entity

    # -- webhook checks ----------------------------------------------------------------------------
    async def _webhook_world(self, harness: Harness) -> list[WebhookDelivery]:
        """Connect, full sync, then the subclass's deliveries, checked for what the checks need."""
        await harness.connect()
        await harness.sync("full")
        deliveries = await self.webhook_deliveries(harness)
        declared = set(harness.connector_class.manifest["webhooks"]["events"])
        assert len(deliveries) >= 3, "webhook_deliveries must return at least three deliveries"
        assert len({d.event_id for d in deliveries}) == len(deliveries), "event ids must be unique"
        assert all(d.type in declared for d in deliveries), ([d.type for d in deliveries], declared)
        assert self._changed_twice(deliveries), "webhook_deliveries must change one record twice"
        assert not await harness.inbox(), "webhook_deliveries must not send anything to the gateway"
        return deliveries

    @staticmethod
    def _changed_twice(deliveries: list[WebhookDelivery]) -> tuple[WebhookDelivery, WebhookDelivery] | None:
        """The first two deliveries (older, newer) changing the same record, or ``None``."""
        for index, older in enumerate(deliveries):
            for newer in deliveries[index + 1:]:
                if (newer.entity, newer.remote_id) == (older.entity, older.remote_id):
                    return older, newer
        return None

    @staticmethod
    def _newest(deliveries: list[WebhookDelivery]) -> dict[tuple[str, str], WebhookDelivery]:
        """(entity, remote id) -> the last delivery changing that record."""
        return {(d.entity, d.remote_id): d for d in deliveries}

    async def test_webhook_signature_is_verified(self, harness: Harness) -> None:
        genuine, other, *_ = await self._webhook_world(harness)
        assert self.webhook_signature_header is not None
        signature = self.webhook_signature_header.lower()
        window = harness.webhook_tolerance
        now = int(time.time())
        unsigned = {k: v for k, v in other.headers.items() if k.lower() != signature}
        assert len(unsigned) < len(other.headers), f"the delivery has no {self.webhook_signature_header} header"
        refused: list[tuple[str, WebhookDelivery, set[int]]] = [
            ("a body changed after signing", replace(other, body=_tampered(other.body)), {401}),
            ("signed with another secret", self.sign_webhook(harness, other, timestamp=now, wrong_secret=True), {401}),
            ("no signature header", replace(other, headers=unsigned), {401}),
            ("signed before the window", self.sign_webhook(harness, other, timestamp=now - window - 60), {401}),
            ("signed after the window", self.sign_webhook(harness, other, timestamp=now + window + 60), {401}),
            ("an unreadable signature", replace(other, headers={**unsigned, signature: "conformance"}), {400, 401}),
            ("a signed body that is not an event",
             self.sign_webhook(harness, replace(other, body=b"{not json"), timestamp=now), {400}),
        ]
        with harness.api() as api:
            async with api(authenticated=False) as http:
                first = await harness.post_webhook(http, genuine)
                assert first.status_code == 200, first.text
                assert first.json()["received"] is True and first.json()["duplicate"] is False, first.json()
                for what, delivery, statuses in refused:
                    answer = await harness.post_webhook(http, delivery)
                    assert answer.status_code in statuses, (what, answer.status_code, answer.text)
                    assert answer.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE), (what, answer.headers)
                    code = "webhook_signature_invalid" if answer.status_code == 401 else "webhook_malformed"
                    assert answer.json()["code"] == code, (what, answer.json())
                stored = [(r.vendor_event_id, r.status) for r in await harness.inbox()]
                assert stored == [(genuine.event_id, "received")], f"a refused delivery was stored: {stored}"
                jobs = await harness.webhook_job_count()
                assert jobs == 1, f"{jobs} webhook jobs for one stored delivery"
                inside = self.sign_webhook(harness, other, timestamp=int(time.time()) - window // 2)
                accepted = await harness.post_webhook(http, inside)
                assert accepted.status_code == 200, ("signed inside the window", accepted.text)
                assert accepted.json()["duplicate"] is False, accepted.json()
        ran = await harness.run_webhook_jobs()
        assert ran == 2, f"{ran} webhook jobs ran for two stored deliveries"
        stored = [(r.vendor_event_id, r.status) for r in await harness.inbox()]
        assert stored == [(genuine.event_id, "processed"), (other.event_id, "processed")], stored

    async def test_webhook_duplicates_change_nothing(self, harness: Harness) -> None:
        deliveries = await self._webhook_world(harness)
        before = len(await harness.events())
        answers: dict[str, dict[str, Any]] = {}
        with harness.api() as api:
            async with api(authenticated=False) as http:
                for delivery in deliveries:  # each one twice in a row, as a vendor retrying a lost answer
                    first = await harness.post_webhook(http, delivery)
                    again = await harness.post_webhook(http, delivery)
                    assert first.status_code == 200 and first.json()["duplicate"] is False, first.text
                    assert again.status_code == 200, again.text
                    assert again.json() == {**first.json(), "duplicate": True}, (first.json(), again.json())
                    answers[delivery.event_id] = first.json()
                ran = await harness.run_webhook_jobs()
                assert ran == len(deliveries), f"{ran} webhook jobs ran for {len(deliveries)} deliveries"
                for delivery in deliveries:  # and once more after they were applied
                    late = await harness.post_webhook(http, delivery)
                    assert late.status_code == 200, late.text
                    assert late.json() == {**answers[delivery.event_id], "duplicate": True}, late.json()
        ran = await harness.run_webhook_jobs()
        assert ran == 0, f"{ran} webhook jobs ran for deliveries already applied"
        rows = sorted((r.vendor_event_id, r.id, r.status, r.attempts) for r in await harness.inbox())
        assert rows == sorted((d.event_id, answers[d.event_id]["id"], "processed", 1) for d in deliveries), rows
        jobs = await harness.webhook_job_count()
        assert jobs == len(deliveries), f"{jobs} webhook jobs for {len(deliveries)} distinct deliveries"
        new = (await harness.events())[before:]
        expected = [(d.event, d.remote_id) for d in deliveries if d.event is not None]
        assert new == expected, f"events {new}, expected one per delivery: {expected}"
        for (entity, remote_id), newest in self._newest(deliveries).items():
            cached = await harness.cached(entity)
            assert remote_id in cached, f"{entity} {remote_id} is not cached"
            wrong = _matches(cached[remote_id], newest.expect)
            assert not wrong, f"{entity} {remote_id} (cached, newest delivery): {wrong}"
            validate_record(entity, cached[remote_id])

    async def test_webhook_reordering_keeps_newest(self, harness: Harness) -> None:
        pair = self._changed_twice(await self._webhook_world(harness))
        assert pair is not None
        older, newer = pair
        assert _matches(newer.expect, older.expect), "the two changes of one record must differ in expect"
        before = len(await harness.events())
        with harness.api() as api:
            async with api(authenticated=False) as http:
                answer = await harness.post_webhook(http, newer)  # the vendor's order swapped: newest first
                assert answer.status_code == 200 and answer.json()["duplicate"] is False, answer.text
                assert await harness.run_webhook_jobs() == 1
                record = (await harness.cached(newer.entity))[newer.remote_id]
                wrong = _matches(record, newer.expect)
                assert not wrong, f"{newer.entity} {newer.remote_id} (cached, newest delivery): {wrong}"
                applied = (await harness.events())[before:]
                expected = [(newer.event, newer.remote_id)] if newer.event else []
                assert applied == expected, f"events {applied}, expected {expected}"

                answer = await harness.post_webhook(http, older)  # then the older one
                assert answer.status_code == 200 and answer.json()["duplicate"] is False, answer.text
                assert await harness.run_webhook_jobs() == 1
        after = (await harness.cached(newer.entity))[newer.remote_id]
        assert after == record, f"the older delivery changed {newer.entity} {newer.remote_id}: {_diff(record, after)}"
        late = (await harness.events())[before + len(applied):]
        assert not late, f"the older delivery emitted {late}"
        stored = [(r.vendor_event_id, r.status) for r in await harness.inbox()]
        assert stored == [(newer.event_id, "processed"), (older.event_id, "processed")], stored

    async def test_webhook_replay_changes_nothing(self, harness: Harness) -> None:
        deliveries = await self._webhook_world(harness)
        newest = self._newest(deliveries)
        with harness.api() as api:
            async with api(authenticated=False) as http:
                for delivery in deliveries:
                    answer = await harness.post_webhook(http, delivery)
                    assert answer.status_code == 200, answer.text
                assert await harness.run_webhook_jobs() == len(deliveries)
                snapshot = await harness.records_of(newest)
                events = await harness.events()
                for key, record in snapshot.items():
                    wrong = _matches(record, newest[key].expect)
                    assert not wrong, f"{key} (cached, newest delivery): {wrong}"

                # the vendor retries an old delivery, signed anew: the inbox knows the event
                retry = self.sign_webhook(harness, deliveries[0], timestamp=int(time.time()))
                answer = await harness.post_webhook(http, retry)
                assert answer.status_code == 200 and answer.json()["duplicate"] is True, answer.text
                # the same changes again under new event ids (a resend): stored, applied, nothing moves
                for delivery in deliveries:
                    replayed = self.sign_webhook(harness, delivery, timestamp=int(time.time()),
                                                 event_id=f"{delivery.event_id}-replay")
                    assert replayed.event_id == f"{delivery.event_id}-replay", replayed
                    answer = await harness.post_webhook(http, replayed)
                    assert answer.status_code == 200 and answer.json()["duplicate"] is False, answer.text
                assert await harness.run_webhook_jobs() == len(deliveries)
        rows = await harness.inbox()
        assert len(rows) == 2 * len(deliveries) and all(r.status == "processed" for r in rows), rows
        changed = _diff(snapshot, await harness.records_of(newest))
        assert not changed, f"replayed deliveries changed cached records: {changed}"
        emitted = (await harness.events())[len(events):]
        assert not emitted, f"replayed deliveries emitted {emitted}"

        # the next poll finds what the webhooks brought already up to date
        results = await harness.sync("full")
        changed = _diff(snapshot, await harness.records_of(newest))
        assert not changed, f"the sync after the webhooks rewrote records they brought: {changed}"
        touched = {(EVENT_NOUN[entity], remote_id) for entity, remote_id in newest}
        polled = [e for e in (await harness.events())[len(events):] if (e[0].split(".")[0], e[1]) in touched]
        assert not polled, f"the sync after the webhooks emitted {polled} ({results})"


def _volatile_scrubber(fields: tuple[str, ...]) -> Callable[[Any], Any] | None:
    """A vcrpy ``before_record_request`` writing ``"<volatile>"`` for ``fields`` of a JSON object
    body (recorded and matched alike); ``None`` when there are none."""
    if not fields:
        return None

    def scrub(request: Any) -> Any:
        body = request.body
        if not body:
            return request
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return request
        if not isinstance(doc, dict) or not set(fields) & doc.keys():
            return request
        request = copy.deepcopy(request)
        request.body = json.dumps({k: "<volatile>" if k in fields else v for k, v in doc.items()}).encode()
        return request

    return scrub


def _scrub_response(response: dict[str, Any]) -> dict[str, Any]:
    """Drop per-run response headers so a re-recording diffs only where the traffic changed."""
    response["headers"] = {k: v for k, v in response["headers"].items() if k.lower() not in ("date", "server")}
    return response
