"""The hot read path: plain SQL for cache reads, without transaction round trips.

On SQLite (embedded mode) reads run inline on the event loop over one ``sqlite3`` connection
in autocommit mode: in WAL mode a reader never waits for a writer, and an indexed point read
takes microseconds, less than a hand-off to a driver thread. On PostgreSQL the same SQL runs
through the async engine on an AUTOCOMMIT connection (no BEGIN/ROLLBACK round trips).

On SQLite, results are also kept in a small cache that is exact: it is emptied whenever
``PRAGMA data_version`` moves, which happens on every commit by any other connection (the
reader itself never writes). A read-mostly API serves repeated pages from memory; under write
load the cache simply misses. PostgreSQL reads are never cached.

SQL uses ``:name`` parameters, which both ``sqlite3`` and SQLAlchemy's ``text()`` accept.
Timestamps are bound through :meth:`FastReader.ts` so each backend compares like with like.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

SQLITE_TS = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy's SQLite DateTime stores values


def as_bytes(value: str | bytes) -> bytes:
    """A text column value as UTF-8 bytes."""
    return value if isinstance(value, bytes) else value.encode()


def as_text(value: str | bytes) -> str:
    """A text column value as ``str``."""
    return value.decode() if isinstance(value, bytes) else value


class FastReader:
    """Runs read-only SQL against the gateway database.

    Args:
        engine: the gateway's async engine (its URL picks the backend).
        cache_size: how many SQLite results to keep (0 disables the cache).
    """

    def __init__(self, engine: AsyncEngine, cache_size: int = 512) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._sqlite: sqlite3.Connection | None = None
        self._sqlite_path = make_url(str(engine.url)).database if self.dialect == "sqlite" else None
        self._version: int | None = None
        self._checked = False
        self._cache: OrderedDict[tuple[Any, ...], list[tuple[Any, ...]]] = OrderedDict()
        self.cache_size = cache_size
        self.hits = self.misses = 0

    def _connection(self) -> sqlite3.Connection:
        if self._sqlite is None:
            conn = sqlite3.connect(self._sqlite_path or ":memory:", isolation_level=None, check_same_thread=False)
            conn.text_factory = bytes  # JSON columns go out as they are stored: no decode and re-encode
            conn.execute("PRAGMA query_only=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            self._sqlite = conn
        return self._sqlite

    def ts(self, value: datetime) -> Any:
        """Bind form of a timestamp: SQLite's stored text (UTC), or the aware datetime itself."""
        if self.dialect == "sqlite":
            if value.tzinfo is not None:
                value = value.astimezone(UTC).replace(tzinfo=None)
            return value.strftime(SQLITE_TS)
        return value

    def parse_ts(self, value: Any) -> datetime:
        """A timestamp column value as an aware UTC datetime."""
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    async def all(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """All rows of a query, as tuples. Text comes back as ``bytes`` on SQLite, ``str`` on
        PostgreSQL: use :func:`as_bytes` / :func:`as_text`."""
        if self.dialect == "sqlite":
            conn = self._connection()
            if not self.cache_size:
                return conn.execute(sql, params).fetchall()
            self._check_version(conn)
            key = (sql, *sorted(params.items()))
            rows = self._cache.get(key)
            if rows is not None:
                self.hits += 1
                self._cache.move_to_end(key)
                return rows
            self.misses += 1
            rows = conn.execute(sql, params).fetchall()
            self._cache[key] = rows
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return rows
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return [tuple(row) for row in (await conn.execute(text(sql), params)).all()]

    def _check_version(self, conn: sqlite3.Connection) -> None:
        """Empty the cache when another connection has committed since the last check.

        The check runs at most once per event-loop iteration: requests handled in the same
        iteration are concurrent with any commit finishing meanwhile, and a client only learns
        its write committed from a response sent in a later iteration, whose reads check again.
        """
        if self._checked:
            return
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._cache.clear()
            self._version = version
        try:
            asyncio.get_running_loop().call_soon(self._uncheck)
        except RuntimeError:  # no running loop (a script): check every time
            return
        self._checked = True

    def _uncheck(self) -> None:
        self._checked = False

    def memo_get(self, key: tuple[Any, ...]) -> bytes | None:
        """A response body stored by :meth:`memo_put`, if no commit happened since (SQLite only)."""
        if self.dialect != "sqlite" or not self.cache_size:
            return None
        self._check_version(self._connection())
        body = self._cache.get(("memo", *key))
        return body  # type: ignore[return-value]

    def memo_put(self, key: tuple[Any, ...], body: bytes) -> None:
        """Keep a response body built from this reader's results until the next commit (SQLite only).

        Call it right after the reads it was built from, with no ``await`` in between: the
        results and the stored version then belong to the same database state.
        """
        if self.dialect != "sqlite" or not self.cache_size:
            return
        self._cache[("memo", *key)] = body  # type: ignore[assignment]
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def one(self, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row of a query, or ``None``."""
        rows = await self.all(sql, params)
        return rows[0] if rows else None

    def json_field(self, column: str, field: str) -> str:
        """SQL for a top-level string field of a JSON text column (field names are trusted constants)."""
        if self.dialect == "postgresql":
            return f"(({column})::jsonb ->> '{field}')"
        return f"json_extract({column}, '$.{field}')"

    def close(self) -> None:
        """Close the SQLite connection, if open."""
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
