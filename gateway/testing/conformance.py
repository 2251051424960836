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
    ``"adjust"`` in inventory's ``write``: one ``create_adjustment`` call moves on hand by its
    delta once; the same request twice through the API with one ``Idempotency-Key`` applies
    once (the second answer is the replay); with a sandbox a full sync confirms the vendor's count.
``test_sync_survives_rate_limits_and_5xx``
    a sandbox and a readable entity: with the sandbox answering bursts of 429 (``Retry-After``)
    and random 503s (``fault_knobs``, set through ``/_sandbox/faults``), the full sync still
    succeeds and reads every record. Runs live, never from a cassette.

HTTP recording: when ``cassette_dir`` is set, every check but the fault one runs inside a vcrpy
cassette ``<cassette_dir>/<check>[-<param>].yaml`` (``X-API-Key``/``Authorization``/``User-Agent`` filtered,
``date``/``server`` response headers dropped, matched on method + path + query + body,
``record_mode="none"``: an unrecorded request fails). ``TILLGATE_RECORD_CASSETTES=1`` records
them again (``record_mode="all"``) from the in-process sandbox: vcrpy patches
``httpx.ASGITransport`` too, so no server is needed and the base URL is a fixed fake host.
The sandbox app is built in replay too (it is cheap and seeded), as the source of the expected
records; the gateway's own API traffic (``http://tillgate.test``) is never recorded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
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
from gateway.errors import VendorCredentialsRejected
from gateway.model import ENTITY_MODELS, AdjustmentCreate, ConnectionCreate, CustomerCreate, ProductCreate
from gateway.sdk.connector import Connector
from gateway.sdk.http import BreakerPolicy, RetryPolicy
from gateway.sdk.registry import ConnectorRegistry
from gateway.services.connections import ConnectionService
from gateway.services.records import EVENT_NOUN
from gateway.services.sync import ENTITY_ORDER, RunResult, SyncEngine
from gateway.storage import tables as t
from gateway.storage.db import Database

__all__ = ["RECORD_ENV", "ConnectorConformance", "Harness", "schema_registry", "validate_record"]

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
        gone = t.records.c.deleted_at.is_not(None) if deleted else t.records.c.deleted_at.is_(None)
        async with self.db.read() as conn:
            rows = (await conn.execute(select(t.records.c.remote_id, t.records.c.data).where(
                t.records.c.connection_id == self.connection_id, t.records.c.entity == entity, gone))).all()
        return {row.remote_id: jsonutil.loads(row.data) for row in rows}

    async def event_types(self) -> list[str]:
        """Types of the connection's events, in ``seq`` order."""
        async with self.db.read() as conn:
            rows = (await conn.execute(select(t.events.c.type).where(
                t.events.c.connection_id == self.connection_id).order_by(t.events.c.seq))).all()
        return [row.type for row in rows]

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

    @contextmanager
    def api(self) -> Iterator[Callable[[], httpx.AsyncClient]]:
        """A factory of ``httpx.AsyncClient`` on the gateway API (tenant key, this registry)."""
        from gateway.api.app import create_app
        from gateway.api.deps import Services
        from gateway.settings import Settings

        settings = Settings(database_url=self.db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()],
                            api_rate_limit="100000/minute")
        services = Services.build(settings, db=self.db, registry=self.registry)
        services.cipher = self.cipher  # the connection was created with this one
        services.connections = ConnectionService(self.db, self.registry, self.cipher)
        app = create_app(settings, services=services)

        def client() -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=API_BASE_URL,
                                     headers={"Authorization": f"Bearer {self.api_key}"})

        yield client


def creatable_entities(connector: type[Connector]) -> list[str]:
    """Entities of :data:`CREATE_MODELS` whose manifest ``write`` lists ``create``."""
    caps = connector.manifest.get("capabilities", {})
    return [e for e in CREATE_MODELS if "create" in caps.get(e, {}).get("write", [])]


def _needs_credentials(connector: type[Connector]) -> bool:
    return bool(connector.manifest.get("credentials_schema", {}).get("required"))


def _readable(connector: type[Connector]) -> list[str]:
    caps = connector.manifest.get("capabilities", {})
    return [e for e in ENTITY_ORDER if caps.get(e, {}).get("read")]


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

    Hooks a subclass with a sandbox overrides: :meth:`vendor_ids`, :meth:`delete_at_vendor`,
    and :meth:`wire` when its connector is not configured through ``client_overrides``.
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
        overrides = {
            "transport": httpx.ASGITransport(app=app),
            "sleep": _no_sleep,
            "rate_limit": None,
            "retry": RetryPolicy(attempts=15, max_total=600, backoff=0.001, backoff_max=0.01, jitter=0),
            "breaker": BreakerPolicy(threshold=1000),
        }
        wired = type(f"Conformance{self.connector.__name__}", (self.connector,), {"client_overrides": overrides})
        return wired, {**self.settings, self.base_url_setting: self.base_url}

    def vendor_ids(self, app: Any, entity: str) -> set[str]:
        """The remote ids of every ``entity`` record the sandbox ``app`` holds."""
        raise NotImplementedError(f"{type(self).__name__} must implement vendor_ids")

    def delete_at_vendor(self, app: Any, entity: str) -> str:
        """Delete one ``entity`` record inside the sandbox ``app``; return its remote id."""
        raise NotImplementedError(f"{type(self).__name__} must implement delete_at_vendor")

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
        assert adjustment["status"] == "applied", adjustment
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
        assert first.json()["status"] == "applied"
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


def _scrub_response(response: dict[str, Any]) -> dict[str, Any]:
    """Drop per-run response headers so a re-recording diffs only where the traffic changed."""
    response["headers"] = {k: v for k, v in response["headers"].items() if k.lower() not in ("date", "server")}
    return response
