"""Database access: one async engine, read connections and write transactions.

SQLite (the embedded default) allows one writer at a time: write transactions are serialised by
an in-process lock and start with ``BEGIN IMMEDIATE`` (so two processes wait on ``busy_timeout``
instead of failing on a lock upgrade), in WAL mode with ``synchronous=FULL`` so a committed
write survives a crash. PostgreSQL runs at READ COMMITTED; code that needs a row to stay put
locks it (``SELECT ... FOR UPDATE`` or a conditional ``UPDATE``).

**SQLite statements run on the event loop** (:class:`InlineSQLiteConnection`). aiosqlite hands
every cursor operation (create, execute, fetch, close) to the connection's driver thread and
back: four thread hops a statement, each paid again whenever the event loop is busy (the hop
back waits for the loop, and the thread for the GIL). Under load a transaction of a dozen
statements held the process's write lock ~3.5 ms, mostly waiting for those hops, and the lock
became the bottleneck (``bench/freshness.py``). Our connections therefore run an operation
inline, on the calling (event-loop) thread, and only hand it to the driver thread when waiting
is possible:

- inside a write transaction, everything runs inline: ``BEGIN IMMEDIATE`` already holds SQLite's
  write lock, and in WAL mode nothing after it waits for another connection;
- ``BEGIN IMMEDIATE`` and reads are tried inline with SQLite's busy timeout at 0; when SQLite
  answers ``SQLITE_BUSY`` (another *process* holds the write lock, a checkpoint or WAL recovery
  is running), the operation is retried on the driver thread with the real busy timeout, so the
  wait never blocks the loop;
- ``COMMIT`` always goes to the driver thread: it is the ``fsync``, and the loop serves other
  requests meanwhile.

The price: while an inline statement runs, the event loop runs nothing else (on the driver
thread SQLite releases the GIL and the loop carries on). That is right for the gateway's
statements, indexed reads and writes of a few rows that take microseconds, well under the cost
of the hops they replace; a statement that scans or rewrites thousands of rows (a full sync's
sweep, a large listing) holds the loop for its duration. ``Database(url, sqlite_inline=False)``
restores aiosqlite's thread-per-operation behaviour.

**Holding a commit** (:meth:`Database.holding`): inside a holding scope the last write
transaction is not committed when its block ends; it stays open (:class:`HeldCommit`) so the
caller can add its final writes with ``transaction(join_held=True)`` and commit once. A job's
handler and its ``done`` then cost one commit instead of two. Anything else the scope does with
the database (another transaction, a read) commits the held transaction first, so code inside
the scope still reads its own writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiosqlite
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from gateway.storage.outbox import EndpointCache
from gateway.storage.reader import FastReader
from gateway.storage.uow import UnitOfWork

log = logging.getLogger(__name__)

#: Set by the idempotency layer: run inside every write transaction of the request, before commit.
PRECOMMIT: contextvars.ContextVar[Callable[[UnitOfWork], Awaitable[None]] | None] = contextvars.ContextVar(
    "tillgate_precommit", default=None
)

#: Milliseconds a SQLite operation handed to the driver thread waits for a lock held elsewhere.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Seconds a held transaction may stay untouched before it is committed anyway (see :class:`HeldCommit`).
HOLD_LIMIT_SECONDS = 0.1

_HOLDING: contextvars.ContextVar[HeldCommit | None] = contextvars.ContextVar("tillgate_holding", default=None)


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


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLite answered ``SQLITE_BUSY`` (any extended code): another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == sqlite3.SQLITE_BUSY
    return "database is locked" in str(exc)


class InlineSQLiteConnection(aiosqlite.Connection):
    """An aiosqlite connection that runs operations on the calling thread when they cannot wait.

    See the module docstring for the rules: the connection's busy timeout is 0 for inline
    operations; an inline attempt answered ``SQLITE_BUSY``, every ``COMMIT`` and closing the
    connection go to the driver thread, which sets the busy timeout to :attr:`busy_timeout_ms`
    around the call. Operations keep their order: while anything handed to the driver thread has
    not finished (a cancelled caller's included), later ones queue behind it on the thread.

    Attributes:
        inline_calls: operations run on the calling thread.
        thread_calls: operations handed to the driver thread.
        busy_retries: inline attempts answered ``SQLITE_BUSY`` and retried on the driver thread.
    """

    def __init__(self, connector: Callable[[], sqlite3.Connection], iter_chunk_size: int, *,
                 busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, inline: bool = True) -> None:
        super().__init__(connector, iter_chunk_size)
        self.busy_timeout_ms = busy_timeout_ms
        self.inline = inline
        self.inline_calls = self.thread_calls = self.busy_retries = 0
        # One writer each (the loop thread, the driver thread): equal when the thread is idle.
        self._sent = 0
        self._finished = 0

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        if self.inline and self._sent == self._finished and not self._needs_thread(fn, args):
            try:
                result = fn(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                self.busy_retries += 1
            else:
                self.inline_calls += 1
                return result
        return await self._on_thread(fn, *args, **kwargs)

    def _needs_thread(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> bool:
        """``COMMIT`` (the fsync) and closing the connection run on the driver thread."""
        name = getattr(fn, "__name__", "")
        if name in ("commit", "close") and getattr(fn, "__self__", None) is self._connection:
            return True
        if name in ("execute", "executemany") and args and isinstance(args[0], str):
            head = args[0].lstrip()[:6].upper()
            return head.startswith(("COMMIT", "END"))
        return False

    async def _on_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        conn = self._connection
        closing = getattr(fn, "__name__", "") == "close" and getattr(fn, "__self__", None) is conn
        timeout = self.busy_timeout_ms if self.inline and not closing else None

        def call() -> Any:
            try:
                if timeout is None or conn is None:
                    return fn(*args, **kwargs)
                conn.execute(f"PRAGMA busy_timeout={timeout:d}")
                try:
                    return fn(*args, **kwargs)
                finally:
                    conn.execute("PRAGMA busy_timeout=0")
            finally:
                self._finished += 1

        self._sent += 1
        self.thread_calls += 1
        return await super()._execute(call)


def _connect_inline(database: Any, *args: Any, inline: bool = True, **kwargs: Any) -> InlineSQLiteConnection:
    """SQLAlchemy's ``async_creator_fn``: an :class:`InlineSQLiteConnection` (awaited by the dialect)."""
    kwargs.pop("iter_chunk_size", None)
    if inline:
        kwargs["timeout"] = 0  # the connect-time statements run inline too; see the class docstring
    connection = InlineSQLiteConnection(functools.partial(sqlite3.connect, database, *args, **kwargs), 64,
                                        inline=inline)
    connection._thread.daemon = True  # as SQLAlchemy does for its own aiosqlite connections
    return connection


class _OpenTransaction:
    """A begun write transaction: its connection, the write lock it holds and the units of work
    (blocks) written in it. Committed or rolled back exactly once."""

    __slots__ = ("conn", "db", "stack", "uows")

    def __init__(self, db: Database, stack: contextlib.AsyncExitStack, conn: AsyncConnection) -> None:
        self.db = db
        self.stack = stack
        self.conn = conn
        self.uows: list[UnitOfWork] = []

    async def commit(self) -> None:
        """Commit, then run every block's ``after_commit`` callbacks and ring the job listeners."""
        await self.stack.aclose()
        for uow in self.uows:
            uow.committed = True
        for uow in self.uows:
            for callback in uow.after_commit:
                callback()
        queued = [job_id for uow in self.uows for job_id in uow.jobs]
        if queued:
            for listener in list(self.db.job_listeners):
                listener(list(queued))

    async def rollback(self, exc: BaseException) -> None:
        """Roll back every block written in this transaction (``exc`` is why)."""
        await self.stack.__aexit__(type(exc), exc, exc.__traceback__)


class HeldCommit:
    """A holding scope of :meth:`Database.holding`: at most one finished, uncommitted transaction.

    The scope belongs to the task that opened it (tasks it starts do not hold). A held transaction
    is committed by the first of: the scope's end (also when it ends with an exception: its blocks
    had finished), a transaction or read the scope starts without ``join_held``, :meth:`commit`,
    or :data:`HOLD_LIMIT_SECONDS` without being touched (a safety net for code that waits on
    something else while it holds the write lock; it logs a warning).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.task = asyncio.current_task()
        self.pending: _OpenTransaction | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expiring: asyncio.Task[None] | None = None
        #: transactions this scope committed after holding them (for tests and metrics)
        self.commits = 0

    def hold(self, txn: _OpenTransaction) -> None:
        """Keep ``txn`` open for the scope."""
        self.pending = txn
        self._timer = asyncio.get_running_loop().call_later(HOLD_LIMIT_SECONDS, self._expire, txn)

    def take(self) -> _OpenTransaction | None:
        """Take the held transaction (for a joining block), or ``None``."""
        txn, self.pending = self.pending, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return txn

    async def commit(self) -> None:
        """Commit the held transaction now (if any); wait for one the safety net is committing."""
        txn = self.take()
        if txn is not None:
            self.commits += 1
            await txn.commit()
        expiring, self._expiring = self._expiring, None
        if expiring is not None:
            await expiring

    def _expire(self, txn: _OpenTransaction) -> None:
        if self.pending is not txn:
            return
        log.warning("a held transaction stayed untouched for %g s: committed without the holder's final writes",
                    HOLD_LIMIT_SECONDS)
        self.take()
        self.commits += 1
        previous = self._expiring

        async def commit_it() -> None:
            if previous is not None:
                await previous
            await txn.commit()

        self._expiring = asyncio.get_running_loop().create_task(commit_it())


class _HoldingReader(FastReader):
    """The :class:`FastReader` of a :class:`Database`: in a holding scope, a read first commits
    the held transaction (read your own writes)."""

    def __init__(self, db: Database, engine: AsyncEngine, cache_size: int) -> None:
        super().__init__(engine, cache_size=cache_size)
        self._db = db

    async def all(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """As :meth:`FastReader.all`, after committing a held transaction of this task."""
        scope = self._db._scope()
        if scope is not None:
            await scope.commit()
        return await super().all(sql, params)


class Database:
    """The gateway's database.

    Use :attr:`reader` for hot cache reads, :meth:`read` for other queries and :meth:`transaction`
    for changes; a transaction's events are
    assigned their ``seq`` and written just before commit (see :class:`UnitOfWork`).

    Args:
        url: the database URL (see :func:`async_url`).
        pool_size: PostgreSQL connections kept (as many again may overflow).
        read_cache_size: results :attr:`reader` keeps (SQLite).
        sqlite_inline: run SQLite statements on the event loop where they cannot wait (see the
            module docstring); ``False``: every operation on aiosqlite's driver thread.
    """

    def __init__(self, url: str, *, pool_size: int = 10, read_cache_size: int = 512,
                 sqlite_inline: bool = True) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self.sqlite_inline = self.is_sqlite and sqlite_inline
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False,
                                      "async_creator_fn": functools.partial(_connect_inline, inline=self.sqlite_inline)}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        if self.is_sqlite:
            self._configure_sqlite()
        self.reader: FastReader = _HoldingReader(self, self.engine, read_cache_size)
        #: The outbox's webhook endpoints cache; delivery workers add their doorbell to its listeners.
        self.endpoints = EndpointCache()
        #: Called with the ids of the jobs a transaction queued (``UnitOfWork.jobs``), after it
        #: committed: the dispatcher's doorbell (:meth:`gateway.api.deps.Services.start_dispatcher`).
        self.job_listeners: list[Callable[[list[str]], None]] = []

    def _configure_sqlite(self) -> None:
        sync_engine = self.engine.sync_engine
        inline = self.sqlite_inline

        @event.listens_for(sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Take over transaction control from the driver so BEGIN IMMEDIATE is possible.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            # Inline operations must never wait on the loop: 0 there, the real timeout on the thread.
            cursor.execute(f"PRAGMA busy_timeout={0 if inline else SQLITE_BUSY_TIMEOUT_MS}")
            cursor.close()

        @event.listens_for(sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

    def _scope(self) -> HeldCommit | None:
        """The holding scope of the running task on this database, if any."""
        scope = _HOLDING.get()
        if scope is None or scope.db is not self or scope.task is not asyncio.current_task():
            return None
        return scope

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (a consistent snapshot for its lifetime on SQLite)."""
        scope = self._scope()
        if scope is not None:
            await scope.commit()
        async with self.engine.connect() as conn:
            yield conn

    async def _begin(self) -> _OpenTransaction:
        stack = contextlib.AsyncExitStack()
        try:
            if self._write_lock is not None:
                await self._write_lock.acquire()
                stack.callback(self._write_lock.release)  # released last, after the connection
            conn = await stack.enter_async_context(self.engine.connect())
            if self.is_sqlite:
                conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
            await stack.enter_async_context(conn.begin())
        except BaseException:
            await stack.aclose()
            raise
        return _OpenTransaction(self, stack, conn)

    @contextlib.asynccontextmanager
    async def transaction(self, tenant_id: str | None = None, *, join_held: bool = False) -> AsyncIterator[UnitOfWork]:
        """A write transaction as a :class:`UnitOfWork`; commits on exit, rolls back on error.

        Inside a holding scope (:meth:`holding`) the commit waits: the transaction is held for
        the scope, committed by its end or by the scope's next use of the database.

        Args:
            tenant_id: whose events this transaction may emit (``None``: none).
            join_held: continue the scope's held transaction, if there is one, instead of
                committing it first: this block's writes commit with it, or roll back with it
                (an error here also undoes the held blocks). Without a held transaction, a new one.
        """
        scope = self._scope()
        txn = None
        if scope is not None:
            if join_held:
                txn = scope.take()
            await scope.commit()
        if txn is None:
            txn = await self._begin()
        uow = UnitOfWork(txn.conn, tenant_id, dialect=self.engine.dialect.name, endpoints=self.endpoints)
        try:
            yield uow
            hook = PRECOMMIT.get()
            if hook is not None:
                await hook(uow)
            await uow.flush_events()
        except BaseException as exc:
            await txn.rollback(exc)
            raise
        txn.uows.append(uow)
        if scope is not None:
            scope.hold(txn)
        else:
            await txn.commit()

    @contextlib.asynccontextmanager
    async def holding(self) -> AsyncIterator[HeldCommit]:
        """A scope whose last write transaction stays open for the caller's final writes.

        Use it only around code that does nothing after its last transaction but return (no
        vendor calls, no waiting on other tasks): until the scope commits, that transaction's
        writes are not durable and, on SQLite, it holds the process's write lock. Then add the
        final writes with ``transaction(join_held=True)``; the scope's end commits. Nested
        scopes of the same task share the outermost one.
        """
        outer = self._scope()
        if outer is not None:
            yield outer
            return
        scope = HeldCommit(self)
        token = _HOLDING.set(scope)
        try:
            yield scope
        except BaseException:
            _HOLDING.reset(token)
            try:
                await scope.commit()  # the held blocks had finished: they stand whatever came after
            except Exception:
                log.exception("could not commit a held transaction after an error in its scope")
            raise
        _HOLDING.reset(token)
        await scope.commit()

    async def dispose(self) -> None:
        """Close every pooled connection."""
        self.reader.close()
        await self.engine.dispose()
