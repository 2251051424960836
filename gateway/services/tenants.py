"""Tenants and their API keys.

A key is ``tgk_<key_id>_<secret>``: ``key_id`` (16 hex) finds the row, the SHA-256 of the whole
key is what is stored, compared in constant time. Keys are shown once, when created.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from gateway.errors import NotFound
from gateway.ids import new_id
from gateway.jsonutil import utcnow
from gateway.storage import tables as t
from gateway.storage.db import Database

KEY_PREFIX = "tgk_"


@dataclass(frozen=True)
class CreatedKey:
    """A new API key: ``secret`` is the full key, shown once."""

    id: str
    tenant_id: str
    secret: str


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_key(key: str) -> str | None:
    """Return the ``key_id`` part of a well-formed key, else ``None``."""
    if not key.startswith(KEY_PREFIX):
        return None
    parts = key[len(KEY_PREFIX):].split("_", 1)
    if len(parts) != 2 or len(parts[0]) != 16 or not parts[1] or len(key) > 200:
        return None
    return parts[0]


async def create_tenant(db: Database, name: str) -> tuple[str, CreatedKey]:
    """Create a tenant, its event counter and a first API key; return (tenant id, key)."""
    tenant_id = new_id("tenant")
    async with db.transaction() as uow:
        await uow.conn.execute(insert(t.tenants).values(id=tenant_id, name=name, created_at=utcnow()))
        await uow.conn.execute(insert(t.event_counters).values(tenant_id=tenant_id, last_seq=0, endpoints_version=0))
    key = await create_key(db, tenant_id, name="default")
    return tenant_id, key


async def find_tenant(db: Database, ref: str) -> str:
    """Return the id of the tenant whose id or name is ``ref``.

    Raises:
        NotFound: no such tenant, or the name is ambiguous.
    """
    async with db.read() as conn:
        rows = (await conn.execute(select(t.tenants.c.id).where((t.tenants.c.id == ref) | (t.tenants.c.name == ref)))).all()
    if len(rows) != 1:
        raise NotFound(f"no single tenant with id or name {ref!r}")
    return rows[0][0]


async def list_tenants(db: Database) -> list[dict]:
    """All tenants as ``{"id", "name", "created_at"}``, oldest first."""
    async with db.read() as conn:
        rows = (await conn.execute(select(t.tenants).order_by(t.tenants.c.created_at))).mappings().all()
    return [dict(row) for row in rows]


async def create_key(db: Database, tenant_id: str, *, name: str = "default") -> CreatedKey:
    """Create an API key for ``tenant_id``; the returned ``secret`` is not stored anywhere."""
    key_id = secrets.token_hex(8)
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    row_id = new_id("api_key")
    async with db.transaction() as uow:
        await uow.conn.execute(
            insert(t.api_keys).values(
                id=row_id, tenant_id=tenant_id, key_id=key_id, key_hash=_hash(secret), name=name, created_at=utcnow()
            )
        )
    return CreatedKey(id=row_id, tenant_id=tenant_id, secret=secret)


async def list_keys(db: Database, tenant_id: str) -> list[dict]:
    """The tenant's keys (never the secrets): id, name, key_id, created_at, revoked_at."""
    cols = [t.api_keys.c.id, t.api_keys.c.name, t.api_keys.c.key_id, t.api_keys.c.created_at, t.api_keys.c.revoked_at]
    async with db.read() as conn:
        rows = (await conn.execute(select(*cols).where(t.api_keys.c.tenant_id == tenant_id))).mappings().all()
    return [dict(row) for row in rows]


async def revoke_key(db: Database, key_ref: str) -> None:
    """Revoke a key by its row id or its ``key_id``.

    Raises:
        NotFound: no such key.
    """
    async with db.transaction() as uow:
        result = await uow.conn.execute(
            update(t.api_keys)
            .where((t.api_keys.c.id == key_ref) | (t.api_keys.c.key_id == key_ref))
            .values(revoked_at=utcnow())
        )
        if result.rowcount == 0:
            raise NotFound(f"no API key {key_ref!r}")


class KeyVerifier:
    """Resolves a presented API key to its tenant, caching verified keys for ``ttl`` seconds.

    The cache saves a database read per request; a revocation is seen after at most ``ttl``.
    """

    def __init__(self, db: Database, ttl: float = 5.0, max_entries: int = 10_000) -> None:
        self.db = db
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, str, str | None]] = {}

    async def tenant_for(self, key: str) -> str | None:
        """Return the tenant id of a valid, unrevoked key, else ``None``."""
        key_id = parse_key(key)
        if key_id is None:
            return None
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is None or cached[0] < now:
            async with self.db.read() as conn:
                row = (
                    await conn.execute(
                        select(t.api_keys.c.key_hash, t.api_keys.c.tenant_id, t.api_keys.c.revoked_at).where(
                            t.api_keys.c.key_id == key_id
                        )
                    )
                ).first()
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            if row is None or row.revoked_at is not None:
                cached = (now + self.ttl, "", None)
            else:
                cached = (now + self.ttl, row.key_hash, row.tenant_id)
            self._cache[key_id] = cached
        _, key_hash, tenant_id = cached
        if tenant_id is None or not hmac.compare_digest(key_hash, _hash(key)):
            return None
        return tenant_id
