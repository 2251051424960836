"""pytest fixtures the conformance suite needs, for a connector kept outside the gateway's repository.

:class:`gateway.testing.conformance.ConnectorConformance` asks for two fixtures, ``db`` (a
:class:`~gateway.storage.db.Database` with the gateway's schema) and ``tenant`` (a fresh tenant
and its API key). The gateway's own ``tests/conftest.py`` provides them on SQLite and PostgreSQL;
a connector's repository loads this plugin instead, from its ``tests/conftest.py``::

    pytest_plugins = ["gateway.testing.fixtures"]

and gets them on a migrated SQLite file per test session (``tillgate_database_url``). Override
``tillgate_database_url`` in that conftest to run on another (migrated) database. The async
fixtures need pytest-asyncio in ``asyncio_mode = "auto"``, as the suite's checks do.

The fixtures' bodies are the functions :func:`migrated_sqlite_url` and :func:`fresh_tenant`,
which the gateway's own ``tests/conftest.py`` calls too.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.storage.db import Database
from gateway.storage.migrate import upgrade

__all__ = ["db", "fresh_tenant", "migrated_sqlite_url", "tenant", "tillgate_database_url"]


def migrated_sqlite_url(directory: Path) -> str:
    """Create ``<directory>/tillgate.db`` migrated to the gateway's schema; return its URL
    (``sqlite:///<directory>/tillgate.db``).

    Raises:
        whatever :func:`gateway.storage.migrate.upgrade` raises (an unwritable directory, say).
    """
    url = f"sqlite:///{directory / 'tillgate.db'}"
    upgrade(url)
    return url


async def fresh_tenant(db: Database, prefix: str) -> tuple[str, str]:
    """Create a tenant named ``<prefix>-<8 random hex digits>``; return ``(tenant_id, api_key)``."""
    from gateway.services.tenants import create_tenant

    tenant_id, key = await create_tenant(db, f"{prefix}-{uuid.uuid4().hex[:8]}")
    return tenant_id, key.secret


@pytest.fixture(scope="session")
def tillgate_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of a SQLite file migrated to the gateway's schema, shared by the session."""
    return migrated_sqlite_url(tmp_path_factory.mktemp("tillgate"))


@pytest.fixture
async def db(tillgate_database_url: str) -> AsyncIterator[Database]:
    """A :class:`Database` on :func:`tillgate_database_url`, disposed after the test."""
    database = Database(tillgate_database_url)
    yield database
    await database.dispose()


@pytest.fixture
async def tenant(db: Database) -> tuple[str, str]:
    """A fresh tenant and its API key: ``(tenant_id, key)`` (tests isolate themselves by tenant)."""
    return await fresh_tenant(db, "conformance")
