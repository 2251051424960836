"""gateway/storage/db.py: SQLite statements on the event loop (and off it when they would wait),
and holding a transaction's commit for the caller's final writes (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from gateway import jsonutil
from gateway.storage import tables as t
from gateway.storage.db import HOLD_LIMIT_SECONDS, Database, InlineSQLiteConnection


def new_name() -> str:
    return f"ten_db_{uuid.uuid4().hex[:12]}"


async def add_tenant_row(uow: Any, name: str) -> None:
    await uow.conn.execute(insert(t.tenants).values(id=name, name=name, created_at=jsonutil.utcnow()))


async def stored(db: Database, names: list[str]) -> set[str]:
    async with db.read() as conn:
        return set((await conn.execute(select(t.tenants.c.id).where(t.tenants.c.id.in_(names)))).scalars())


def count_commits(db: Database) -> list[int]:
    """A counter of the engine's COMMITs (``[n]``), for the life of ``db``."""
    commits = [0]

    @event.listens_for(db.engine.sync_engine, "commit")
    def _count(_conn: Any) -> None:
        commits[0] += 1

    return commits


@pytest.fixture
async def other(database_url: str):
    """A second Database on the same URL: what another process sees."""
    database = Database(database_url)
    yield database
    await database.dispose()


# -- SQLite: inline statements ----------------------------------------------------------------------
async def driver_of(conn: Any) -> InlineSQLiteConnection:
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert isinstance(driver, InlineSQLiteConnection)
    return driver


async def test_sqlite_statements_run_on_the_loop_and_only_commit_goes_to_the_driver_thread(sqlite_only_url):
    db = Database(sqlite_only_url)
    try:
        name = new_name()
        async with db.transaction() as uow:
            driver = await driver_of(uow.conn)
            inline, threaded = driver.inline_calls, driver.thread_calls
            await add_tenant_row(uow, name)
            assert (await uow.conn.execute(select(func.count()).select_from(t.tenants)
                                           .where(t.tenants.c.id == name))).scalar_one() == 1
            assert driver.thread_calls == threaded and driver.inline_calls > inline
        assert driver.thread_calls == threaded + 1  # the COMMIT, and nothing else
        async with db.read() as conn:
            reader = await driver_of(conn)
            threaded = reader.thread_calls
            assert (await conn.execute(select(t.tenants.c.name).where(t.tenants.c.id == name))).scalar_one() == name
            assert reader.thread_calls == threaded and reader.busy_retries == 0
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar_one() == 0  # inline never waits
        with pytest.raises(IntegrityError):  # an error raised inline rolls the transaction back as before
            async with db.transaction() as uow:
                await add_tenant_row(uow, name + "_2")
                await add_tenant_row(uow, name)
        assert await stored(db, [name, name + "_2"]) == {name}
    finally:
        await db.dispose()


async def test_with_inline_off_every_operation_goes_to_the_driver_thread(sqlite_only_url):
    db = Database(sqlite_only_url, sqlite_inline=False)
    try:
        name = new_name()
        async with db.transaction() as uow:
            await add_tenant_row(uow, name)
            driver = await driver_of(uow.conn)
        assert driver.inline_calls == 0 and driver.thread_calls > 3
        assert await stored(db, [name]) == {name}
    finally:
        await db.dispose()


async def test_a_write_lock_held_by_another_process_is_waited_for_off_the_loop(sqlite_only_url):
    """``BEGIN IMMEDIATE`` answered SQLITE_BUSY inline is retried on the driver thread with the
    busy timeout: the loop keeps running meanwhile, and WAL reads are never blocked."""
    db = Database(sqlite_only_url)
    other_process = sqlite3.connect(make_url(sqlite_only_url).database, isolation_level=None)
    try:
        async with db.read() as conn:  # a pooled connection, so the busy one is the one we inspect
            driver = await driver_of(conn)
        other_process.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        beat = asyncio.create_task(ticker())
        name = new_name()

        async def write() -> None:
            async with db.transaction() as uow:
                await add_tenant_row(uow, name)

        writer = asyncio.create_task(write())
        await asyncio.sleep(0.3)
        assert not writer.done()
        assert ticks >= 20  # the loop was not blocked while the writer waited
        assert await stored(db, [name]) == set()  # reads go on meanwhile
        other_process.execute("COMMIT")
        await asyncio.wait_for(writer, 10)
        beat.cancel()
        assert driver.busy_retries >= 1
        assert await stored(db, [name]) == {name}
    finally:
        other_process.close()
        await db.dispose()


# -- holding a commit (both backends) -------------------------------------------------------------------
async def test_a_held_transaction_and_the_joined_writes_commit_once_at_the_end_of_the_scope(db, other):
    commits = count_commits(db)
    first, second = new_name(), new_name()
    ran: list[str] = []
    async with db.holding() as scope:
        async with db.transaction() as uow:
            await add_tenant_row(uow, first)
            uow.after_commit.append(lambda: ran.append("first"))
        assert not uow.committed and ran == [] and commits == [0]
        assert await stored(other, [first]) == set()  # not committed yet
        async with db.transaction(join_held=True) as joined:
            await add_tenant_row(joined, second)
            joined.after_commit.append(lambda: ran.append("second"))
        assert await stored(other, [first, second]) == set()
    assert uow.committed and joined.committed and ran == ["first", "second"]
    assert commits == [1] and scope.commits == 1
    assert await stored(other, [first, second]) == {first, second}


async def test_an_error_in_a_joining_block_undoes_the_held_writes_too(db):
    first, second = new_name(), new_name()
    with pytest.raises(RuntimeError):
        async with db.holding():
            async with db.transaction() as uow:
                await add_tenant_row(uow, first)
            async with db.transaction(join_held=True) as joined:
                await add_tenant_row(joined, second)
                raise RuntimeError("the final write failed")
    assert not uow.committed and await stored(db, [first, second]) == set()


async def test_the_scopes_next_read_or_transaction_commits_the_held_one_first(db, other):
    first, second = new_name(), new_name()
    async with db.holding():
        async with db.transaction() as uow:
            await add_tenant_row(uow, first)
        assert await stored(db, [first]) == {first}  # read your own writes: committed first
        assert await stored(other, [first]) == {first}
        async with db.transaction() as uow:  # not joined: a transaction of its own, held in turn
            await add_tenant_row(uow, second)
        row = await db.reader.one("SELECT id FROM tenants WHERE id = :id", {"id": second})
        assert row is not None  # the fast reader commits it first too
    assert await stored(other, [first, second]) == {first, second}


async def test_an_error_after_a_held_transaction_still_commits_it(db):
    name = new_name()
    with pytest.raises(LookupError):
        async with db.holding():
            async with db.transaction() as uow:
                await add_tenant_row(uow, name)
            raise LookupError("the handler failed after its write")
    assert uow.committed and await stored(db, [name]) == {name}


async def test_nested_scopes_share_the_outer_one_and_other_tasks_never_hold(db, other):
    held, by_task = new_name(), new_name()
    async with db.holding() as outer:

        async def elsewhere() -> None:  # a task started in the scope: its writes commit as usual
            async with db.transaction() as uow:
                await add_tenant_row(uow, by_task)

        await asyncio.create_task(elsewhere())
        assert await stored(other, [by_task]) == {by_task}
        async with db.holding() as inner:
            assert inner is outer
            async with db.transaction() as uow:
                await add_tenant_row(uow, held)
        assert await stored(other, [held]) == set()  # the inner scope's end left it to the outer one
    assert await stored(other, [held]) == {held}


async def test_a_held_transaction_left_untouched_is_committed_by_the_safety_net(db, other, caplog):
    """A holder that waits on another task's write (which on SQLite needs the write lock the held
    transaction has) would wait for ever: after HOLD_LIMIT_SECONDS the held one is committed."""
    held, by_task = new_name(), new_name()
    caplog.set_level(logging.WARNING, logger="gateway.storage.db")
    async with db.holding():
        async with db.transaction() as uow:
            await add_tenant_row(uow, held)

        async def elsewhere() -> None:
            async with db.transaction() as task_uow:
                await add_tenant_row(task_uow, by_task)

        await asyncio.wait_for(asyncio.create_task(elsewhere()), 10)
        await asyncio.sleep(HOLD_LIMIT_SECONDS * 2)
        assert uow.committed and await stored(other, [held, by_task]) == {held, by_task}
    assert any("held transaction" in r.getMessage() for r in caplog.records)


async def test_events_of_joined_blocks_commit_together_in_one_gap_free_run_of_seqs(db, tenant):
    tenant_id = tenant[0]

    async def seqs() -> list[int]:
        async with db.read() as conn:
            return list((await conn.execute(select(t.events.c.seq).where(t.events.c.tenant_id == tenant_id)
                                            .order_by(t.events.c.seq))).scalars())

    before = await seqs()
    with pytest.raises(RuntimeError):  # rolled back: no seq is used up
        async with db.holding():
            async with db.transaction(tenant_id) as uow:
                uow.emit("test.held", None, {"n": 1}, [])
            async with db.transaction(tenant_id, join_held=True) as uow:
                uow.emit("test.held", None, {"n": 2}, [])
                raise RuntimeError("undo both")
    assert await seqs() == before
    async with db.holding():
        async with db.transaction(tenant_id) as uow:
            uow.emit("test.held", None, {"n": 1}, [])
            uow.emit("test.held", None, {"n": 2}, [])
        async with db.transaction(tenant_id, join_held=True) as uow:
            uow.emit("test.held", None, {"n": 3}, [])
    after = await seqs()
    last = before[-1] if before else 0
    assert after == [*before, last + 1, last + 2, last + 3]
