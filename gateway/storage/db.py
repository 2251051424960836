"""Database access: one async engine, read connections and write transactions.

SQLite (the embedded default) allows one writer at a time: write transactions are serialised by
an in-process lock and start with ``BEGIN IMMEDIATE`` (so two processes wait on ``busy_timeout``
instead of failing on a lock upgrade), in WAL mode with ``synchronous=FULL`` so a committed
write survives a crash. PostgreSQL runs at READ COMMITTED; code that needs a row to stay put
locks it (``SELECT ... FOR UPDATE`` or a conditional ``UPDATE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.storage.outbox import EndpointCache
from gateway.storage.reader import FastReader
from gateway.storage.uow import UnitOfWork

#: Set by the idempotency layer: run inside every write transaction of the request, before commit.
PRECOMMIT: contextvars.ContextVar[Callable[[UnitOfWork], Awaitable[None]] | None] = contextvars.ContextVar(
    "tillgate_precommit", default=None
)


def async_url(url: str) -> str:
    """Map a user-facing database URL to its async driver.

    ``sqlite:///x.db`` → ``sqlite+aiosqlite:///x.db``; ``postgresql://`` / ``postgres://`` →
    ``postgresql+psycopg://``. URLs that already name a driver are kept.

    Raises:
        ValueError: the URL names a database other than SQLite or PostgreSQL.
    """
    parsed = make_url(url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    else:
        raise ValueError(f"unsupported database {backend!r}: use sqlite:// or postgresql://")
    return parsed.render_as_string(hide_password=False)


class Database:
    """The gateway's database.

    Use :attr:`reader` for hot cache reads, :meth:`read` for other queries and :meth:`transaction`
    for changes; a transaction's events are
    assigned their ``seq`` and written just before commit (see :class:`UnitOfWork`).
    """

    def __init__(self, url: str, *, pool_size: int = 10, read_cache_size: int = 512) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        if self.is_sqlite:
            self._configure_sqlite()
        self.reader = FastReader(self.engine, cache_size=read_cache_size)
        #: The outbox's webhook endpoints cache; delivery workers add their doorbell to its listeners.
        self.endpoints = EndpointCache()
        #: Called with the ids of the jobs a transaction queued (``UnitOfWork.jobs``), after it
        #: committed: the dispatcher's doorbell (:meth:`gateway.api.deps.Services.start_dispatcher`).
        self.job_listeners: list[Callable[[list[str]], None]] = []

    def _configure_sqlite(self) -> None:
        sync_engine = self.engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take over transaction control from the driver so BEGIN IMMEDIATE is possible.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (a consistent snapshot for its lifetime on SQLite)."""
        async with self.engine.connect() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def transaction(self, tenant_id: str | None = None) -> AsyncIterator[UnitOfWork]:
        """A write transaction as a :class:`UnitOfWork`; commits on exit, rolls back on error.

        Args:
            tenant_id: whose events this transaction may emit (``None``: none).
        """
        lock = self._write_lock
        if lock is not None:
            await lock.acquire()
        try:
            async with self.engine.connect() as conn:
                if self.is_sqlite:
                    conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
                async with conn.begin():
                    uow = UnitOfWork(conn, tenant_id, dialect=self.engine.dialect.name, endpoints=self.endpoints)
                    yield uow
                    hook = PRECOMMIT.get()
                    if hook is not None:
                        await hook(uow)
                    await uow.flush_events()
                uow.committed = True
                for callback in uow.after_commit:
                    callback()
                if uow.jobs:
                    for listener in list(self.job_listeners):
                        listener(list(uow.jobs))
        finally:
            if lock is not None:
                lock.release()

    async def dispose(self) -> None:
        """Close every pooled connection."""
        self.reader.close()
        await self.engine.dispose()
