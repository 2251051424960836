"""Shared fixtures.

Storage and API tests run on SQLite and on the real PostgreSQL (``backend`` fixture). The
PostgreSQL database (``TILLGATE_TEST_DATABASE_URL``, default the local server's ``test``
database) gets a fresh, migrated schema per test session; tests isolate themselves by creating
their own tenant. A missing server fails the test with a clear message, never a skip.
"""

from __future__ import annotations

import base64
import gc
import os
import uuid
from collections.abc import AsyncIterator

import pytest

# Imported here, at a shallow stack and before the suite makes garbage, so pytest's assertion
# rewriting of this plugin happens once and early. CPython 3.11 can raise "SystemError: AST
# constructor recursion depth mismatch" when rewriting a module at collection time (seen in a
# fresh clone, intermittently; pytest-dev/pytest#10874).
import schemathesis  # noqa: F401
import sqlalchemy as sa

from gateway.storage.db import Database
from gateway.storage.migrate import upgrade
from gateway.testing.fixtures import fresh_tenant, migrated_sqlite_url


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session):  # type: ignore[no-untyped-def]
    """Collect with the cyclic GC paused, so no finalizer runs while modules are rewritten
    (the same CPython 3.11 fault)."""
    gc.disable()
    try:
        return (yield)
    finally:
        gc.enable()


PG_URL = os.environ.get("TILLGATE_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite file shared by the session."""
    return migrated_sqlite_url(tmp_path_factory.mktemp("db"))


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A freshly created and migrated PostgreSQL schema for this session."""
    engine = sa.create_engine(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    schema = f"tillgate_test_{uuid.uuid4().hex[:10]}"
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_URL} ({exc.__class__.__name__}). Start it or point "
            "TILLGATE_TEST_DATABASE_URL at a server; these tests do not skip.",
            pytrace=False,
        )
    sep = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    upgrade(url)
    yield url
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """The URL of a migrated database, once per backend."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def sqlite_only_url(sqlite_url: str) -> str:
    """For tests that need only one backend."""
    return sqlite_url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A :class:`Database` on each backend."""
    database = Database(database_url)
    yield database
    await database.dispose()


@pytest.fixture
async def tenant(db: Database) -> tuple[str, str]:
    """A fresh tenant and its API key: ``(tenant_id, key)``."""
    return await fresh_tenant(db, "test")


@pytest.fixture
async def services(db: Database):
    """The app's services container on each backend."""
    from gateway.api.deps import Services
    from gateway.settings import Settings

    settings = Settings(database_url=db.url, secret_keys=[base64.urlsafe_b64encode(os.urandom(32)).decode()],
                        api_rate_limit="100000/minute")
    return Services.build(settings, db=db)


@pytest.fixture
async def client(services, tenant):
    """An ``httpx.AsyncClient`` on the app (through ``ASGITransport``) authenticated as ``tenant``."""
    import httpx

    from gateway.api.app import create_app

    app = create_app(services.settings, services=services)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tillgate.test",
                                 headers={"Authorization": f"Bearer {tenant[1]}"}) as http:
        yield http


@pytest.fixture
async def local_connection(client) -> dict:
    """A new local connection of the client's tenant."""
    response = await client.post("/v1/connections", json={"connector": "local", "name": "Shop"})
    assert response.status_code == 201, response.text
    return response.json()
