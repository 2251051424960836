"""Alembic migrations build exactly the schema ``gateway/storage/tables.py`` describes."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gateway.storage.db import Database
from gateway.storage.tables import metadata


async def test_migrated_schema_matches_the_tables(db: Database):
    def diff(sync_conn):  # type: ignore[no-untyped-def]
        context = MigrationContext.configure(sync_conn, opts={"compare_type": True})
        return compare_metadata(context, metadata)

    async with db.engine.connect() as conn:
        changes = await conn.run_sync(diff)
    assert changes == [], f"tables.py and the migrations disagree; add a revision: {changes}"
