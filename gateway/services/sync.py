"""The sync engine: keeps a connection's records cache in step with the vendor.

A run reads one entity through :meth:`Connector.fetch` page by page and upserts each record
(:func:`gateway.services.records.upsert`: an unchanged content hash writes nothing and emits
nothing; an older vendor ``updated_at`` never overwrites a newer one). After each page the run's
checkpoint is saved, so an interrupted backfill resumes after the last committed page.

Modes:

- ``full``: read everything, then mark-and-sweep: live records the run did not see are
  soft-deleted (``<noun>.deleted``). A run resumed from a checkpoint has not seen the pages
  before it, so it does not sweep; the next uninterrupted full run does.
- ``incremental``: when the manifest marks the entity ``incremental``, read only what changed
  since the high-water mark minus a lookback window; otherwise read everything and let the
  content hash find the changes (a full scan: it sweeps too).

Skipping unchanged pages: a connector may give each page a ``fingerprint`` (a digest of the
response bytes and of every other input of its mapping) and map its records lazily. A full scan
stores the fingerprints it read with the vendor ids on each page (``sync_pages``); the next scan
skips a page whose fingerprint it stored, without mapping, hashing or touching a row: those
records are already cached exactly as they would be mapped. That holds only while nothing else
changed the entity's cache rows, so a run also stores a ``cache_mark`` (live and deleted counts
and the newest ``updated_at`` of the entity's rows) when it ends and no other writer touched the
rows while it ran; a scan uses the stored fingerprints only when the mark still matches. Any other
write (a webhook, an API write, a sweep) changes the mark, and the next scan diffs every record.

Checkpoints: a page that writes saves the checkpoint in its own transaction; runs of skipped pages
save it at most every :data:`SKIP_CHECKPOINT_SECONDS` (resuming re-reads a few cheap pages).

Every run leaves a ``sync_runs`` row and emits ``connection.sync_completed`` or
``connection.sync_failed``; per-entity state is in ``sync_states``.

Reconciliation (:meth:`SyncEngine.reconcile`, the ``reconcile`` job): a full count of the
connection's inventory compared with the cache. It reads every page (no modified-since filter, no
skipped pages, no checkpoint), and each cached level whose ``on_hand`` differs from the count is
corrected and reported as ``inventory.drift`` instead of ``inventory.updated``
(:func:`gateway.services.records.upsert_many` with ``reconcile``); the gateway's own writes
coming back (echoes) or still in flight (open write-journal entries) are not drift. It leaves a
``sync_runs`` row with mode ``reconcile`` (the history, and the scheduler's clock) but touches
no sync state and emits no ``connection.*`` event: a count that finds nothing emits nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, func, insert, select, update

from gateway import jsonutil
from gateway.ids import new_id
from gateway.sdk.connector import Connector
from gateway.services import records
from gateway.storage import tables as t
from gateway.storage.db import Database

log = logging.getLogger("tillgate.sync")

#: Entities in dependency order: what orders and inventory refer to is synced first.
ENTITY_ORDER = ("locations", "categories", "products", "customers", "inventory", "orders")
DEFAULT_LOOKBACK = timedelta(minutes=5)
#: At most this long between checkpoint saves while pages are being skipped.
SKIP_CHECKPOINT_SECONDS = 2.0


_COUNTS = ("pages", "seen", "created", "updated", "unchanged", "deleted")
_SAVE_CHECKPOINT = update(t.sync_states).where(
    t.sync_states.c.connection_id == bindparam("b_connection"), t.sync_states.c.entity == bindparam("b_entity"),
).values(checkpoint=bindparam("b_checkpoint"), updated_at=bindparam("b_now"))
_SAVE_COUNTS = update(t.sync_runs).where(t.sync_runs.c.id == bindparam("b_run")).values(
    {name: bindparam(f"b_{name}") for name in _COUNTS})


@dataclass
class RunResult:
    """Counts of one run (``status`` ``succeeded`` or ``failed``)."""

    run_id: str
    entity: str
    mode: str
    status: str = "running"
    pages: int = 0
    seen: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    resumed: bool = False
    error: str | None = None


class SyncEngine:
    """Runs syncs for one connection (a :class:`Connector` instance bound to it)."""

    def __init__(self, db: Database, connector: Connector, *, lookback: timedelta = DEFAULT_LOOKBACK) -> None:
        self.db = db
        self.connector = connector
        self.connection_id = connector.context.id
        self.tenant_id = connector.context.tenant_id
        self.lookback = lookback

    def entities(self) -> list[str]:
        """Entities the connector can read, in dependency order."""
        capabilities = self.connector.manifest.get("capabilities", {})
        return [entity for entity in ENTITY_ORDER if capabilities.get(entity, {}).get("read")]

    def _incremental(self, entity: str) -> bool:
        return bool(self.connector.manifest.get("capabilities", {}).get(entity, {}).get("incremental"))

    async def _state(self, entity: str) -> dict[str, Any]:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(t.sync_states).where(
                        t.sync_states.c.connection_id == self.connection_id, t.sync_states.c.entity == entity
                    )
                )
            ).mappings().first()
        if row is not None:
            return dict(row)
        now = jsonutil.utcnow()
        async with self.db.transaction() as uow:
            await uow.conn.execute(
                insert(t.sync_states).values(connection_id=self.connection_id, entity=entity, status="idle",
                                             records=0, updated_at=now)
            )
        return {"status": "idle", "checkpoint": None, "run_id": None, "mode": None, "high_water": None,
                "last_full_sync_at": None}

    async def _save_state(self, uow: Any, entity: str, **values: Any) -> None:
        await uow.conn.execute(
            update(t.sync_states)
            .where(t.sync_states.c.connection_id == self.connection_id, t.sync_states.c.entity == entity)
            .values(updated_at=jsonutil.utcnow(), **values)
        )

    async def run(self, entity: str, *, mode: str = "auto",
                  on_page: Callable[[RunResult], None] | None = None) -> RunResult:
        """Sync one entity.

        Args:
            mode: ``full``, ``incremental``, or ``auto`` (full until one full run succeeded).
            on_page: called with the running counts after each committed page (progress bars).

        Raises:
            whatever the connector raises (after the run is recorded as failed and
            ``connection.sync_failed`` emitted); the checkpoint is kept for the retry.
        """
        state = await self._state(entity)
        resuming = bool(state.get("checkpoint")) and state.get("run_id") is not None
        if resuming:
            run_id, mode = state["run_id"], state["mode"] or "full"
        else:
            if mode == "auto":
                mode = "incremental" if state.get("last_full_sync_at") else "full"
            run_id = new_id("sync_run")
        since = None
        if mode == "incremental" and self._incremental(entity) and state.get("high_water"):
            since = state["high_water"] - self.lookback
        sweep = since is None and not resuming
        result = RunResult(run_id=run_id, entity=entity, mode=mode, resumed=resuming)
        if resuming:  # continue the interrupted run's counts
            async with self.db.read() as conn:
                done = (await conn.execute(select(t.sync_runs).where(t.sync_runs.c.id == run_id))).mappings().first()
            if done is not None:
                for name in ("pages", "seen", "created", "updated", "unchanged", "deleted"):
                    setattr(result, name, done[name])
        now = jsonutil.utcnow()
        async with self.db.transaction() as uow:
            if not resuming:
                await uow.conn.execute(
                    insert(t.sync_runs).values(id=run_id, connection_id=self.connection_id, entity=entity, mode=mode,
                                               status="running", started_at=now)
                )
            await self._save_state(uow, entity, status="running", run_id=run_id, mode=mode, last_started_at=now,
                                   last_error=None)
        seen: set[str] = set()
        high_water: datetime | None = state.get("high_water")
        checkpoint = jsonutil.loads(state["checkpoint"]) if resuming else None
        known = await self._known_pages(entity, state.get("cache_mark"))
        scanned: dict[str, list[str]] = {}  # fingerprint -> vendor ids, of the pages this run read
        unsaved: dict[str, Any] | None = None  # a skipped page's checkpoint not saved yet
        saved_at = time.monotonic()
        try:
            async for page in self.connector.fetch(entity, since=since, checkpoint=checkpoint):
                fingerprint = page.fingerprint
                ids = known.get(fingerprint) if fingerprint is not None else None
                if ids is not None:  # stored exactly as it would map: nothing to map, hash or write
                    scanned[fingerprint] = ids
                    seen.update(ids)
                    result.pages += 1
                    result.seen += len(ids)
                    result.unchanged += len(ids)
                    unsaved = {"checkpoint": page.checkpoint}
                    if page.checkpoint is not None and time.monotonic() - saved_at >= SKIP_CHECKPOINT_SECONDS:
                        async with self.db.transaction(self.tenant_id) as uow:
                            await self._save_checkpoint(uow, entity, page.checkpoint, result)
                        unsaved, saved_at = None, time.monotonic()
                    if on_page is not None:
                        on_page(result)
                    continue
                unsaved = None
                async with self.db.transaction(self.tenant_id) as uow:
                    await self._upsert_page(uow, entity, page, result)
                    for item in page.records:
                        seen.add(item.remote_id)
                        if item.remote_updated_at and (high_water is None or item.remote_updated_at > high_water):
                            high_water = item.remote_updated_at
                    await self._save_checkpoint(uow, entity, page.checkpoint, result)
                saved_at = time.monotonic()
                if fingerprint is not None:
                    scanned[fingerprint] = [item.remote_id for item in page.records]
                if on_page is not None:
                    on_page(result)
            if sweep and not (known and scanned.keys() == known.keys()):
                # (when the scan read exactly the stored pages, ``seen`` is the live set the last
                # scan left and nobody changed since: nothing to sweep)
                result.deleted = await self._sweep(entity, seen)
        except Exception as exc:
            result.status, result.error = "failed", f"{exc.__class__.__name__}: {exc}"
            if unsaved is not None and unsaved["checkpoint"] is not None:  # keep the skipped pages' progress
                async with self.db.transaction(self.tenant_id) as uow:
                    await self._save_checkpoint(uow, entity, unsaved["checkpoint"], result)
            await self._finish(entity, result, high_water, full=False)
            raise
        result.status = "succeeded"
        await self._finish(entity, result, high_water, full=mode == "full" or since is None,
                           pages=scanned if sweep else None, started=now)
        return result

    async def _upsert_page(self, uow: Any, entity: str, page: Any, result: RunResult, *,
                           reconcile: bool = False) -> None:
        """Upsert one fetched page's records in ``uow`` and count them into ``result``."""
        outcomes = await records.upsert_many(uow, connection_id=self.connection_id, entity=entity, items=[
            records.UpsertItem(remote_id=item.remote_id, body=item.body, raw=item.raw,
                               remote_updated_at=item.remote_updated_at, created_at=item.created_at)
            for item in page.records
        ], lock=reconcile, reconcile=reconcile)
        for outcome in outcomes:
            if outcome.action == "created":
                result.created += 1
            elif outcome.action == "updated":
                result.updated += 1
            else:
                result.unchanged += 1
        result.pages += 1
        result.seen += len(outcomes)

    async def reconcile(self, entity: str = "inventory") -> RunResult:
        """Count ``entity`` (inventory) at the vendor in full and correct the cache, reporting
        each cached level whose ``on_hand`` the count changes as ``inventory.drift`` (see the
        module docstring). Each page commits on its own; a failed count is simply run again (it
        keeps no checkpoint: a level already corrected is unchanged the second time).

        Returns:
            the run's counts (mode ``reconcile``; ``updated`` includes the drifted levels), also
            stored as a ``sync_runs`` row.

        Raises:
            whatever the connector raises (after the run is recorded as failed).
        """
        result = RunResult(run_id=new_id("sync_run"), entity=entity, mode="reconcile")
        async with self.db.transaction() as uow:
            await uow.conn.execute(insert(t.sync_runs).values(
                id=result.run_id, connection_id=self.connection_id, entity=entity, mode="reconcile",
                status="running", started_at=jsonutil.utcnow()))
        drifted = 0

        async def finish() -> None:
            async with self.db.transaction() as uow:
                await self._save_run(uow, result)
                await uow.conn.execute(update(t.sync_runs).where(t.sync_runs.c.id == result.run_id).values(
                    status=result.status, error=result.error, finished_at=jsonutil.utcnow()))
            log.info("reconcile %s %s: %s, %d counted, %d drifted", self.connection_id, entity, result.status,
                     result.seen, drifted)

        try:
            async for page in self.connector.fetch(entity, since=None, checkpoint=None):
                async with self.db.transaction(self.tenant_id) as uow:
                    await self._upsert_page(uow, entity, page, result, reconcile=True)
                    drifted += sum(1 for event in uow.events if event.type == "inventory.drift")
                    await self._save_run(uow, result)
        except Exception as exc:
            result.status, result.error = "failed", f"{exc.__class__.__name__}: {exc}"
            await finish()
            raise
        result.status = "succeeded"
        await finish()
        return result

    async def _save_checkpoint(self, uow: Any, entity: str, checkpoint: dict[str, Any] | None,
                               result: RunResult) -> None:
        """Save the position after a page and the run's counts (statements built once: per page)."""
        await uow.conn.execute(_SAVE_CHECKPOINT, {
            "b_connection": self.connection_id, "b_entity": entity, "b_now": jsonutil.utcnow(),
            "b_checkpoint": None if checkpoint is None else jsonutil.dumps(checkpoint).decode(),
        })
        await self._save_run(uow, result)

    async def _cache_mark(self, conn: Any, entity: str) -> str:
        """``"<live>:<deleted>:<newest updated_at>"`` of the entity's cache rows: any write changes it."""
        row = (await conn.execute(
            select(func.count(), func.count(t.records.c.deleted_at), func.max(t.records.c.updated_at)).where(
                t.records.c.connection_id == self.connection_id, t.records.c.entity == entity)
        )).one()
        newest = jsonutil.rfc3339(row[2]) if row[2] is not None else "-"
        return f"{row[0] - row[1]}:{row[1]}:{newest}"

    async def _known_pages(self, entity: str, mark: str | None) -> dict[str, list[str]]:
        """Fingerprint -> vendor ids of the pages the last full scan stored, when its cache mark
        still holds (else ``{}``: every page is diffed record by record)."""
        if mark is None:
            return {}
        async with self.db.read() as conn:
            if await self._cache_mark(conn, entity) != mark:
                return {}
            rows = (await conn.execute(select(t.sync_pages.c.fingerprint, t.sync_pages.c.remote_ids).where(
                t.sync_pages.c.connection_id == self.connection_id, t.sync_pages.c.entity == entity))).all()
        return {row.fingerprint: orjson.loads(row.remote_ids) for row in rows}  # lists of strings

    async def _store_pages(self, uow: Any, entity: str, pages: dict[str, list[str]]) -> None:
        """Make ``sync_pages`` of the entity exactly ``pages`` (writing only the difference)."""
        where = (t.sync_pages.c.connection_id == self.connection_id, t.sync_pages.c.entity == entity)
        stored = {row.fingerprint for row in (await uow.conn.execute(
            select(t.sync_pages.c.fingerprint).where(*where))).all()}
        gone = sorted(stored - pages.keys())
        for start in range(0, len(gone), 500):
            await uow.conn.execute(delete(t.sync_pages).where(*where, t.sync_pages.c.fingerprint.in_(gone[start:start + 500])))
        new = [{"connection_id": self.connection_id, "entity": entity, "fingerprint": fingerprint,
                "remote_ids": jsonutil.dumps(ids).decode()} for fingerprint, ids in pages.items() if fingerprint not in stored]
        if new:
            await uow.conn.execute(insert(t.sync_pages), new)

    async def _save_run(self, uow: Any, result: RunResult) -> None:
        """Write the run's counts to its ``sync_runs`` row."""
        await uow.conn.execute(_SAVE_COUNTS, {"b_run": result.run_id,
                                              **{f"b_{name}": getattr(result, name) for name in _COUNTS}})

    async def _sweep(self, entity: str, seen: set[str]) -> int:
        """Soft-delete live records of ``entity`` the run did not see; return how many."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(t.records.c.id, t.records.c.remote_id).where(
                        t.records.c.connection_id == self.connection_id, t.records.c.entity == entity,
                        t.records.c.deleted_at.is_(None),
                    )
                )
            ).all()
        gone = [row.id for row in rows if row.remote_id not in seen]
        for start in range(0, len(gone), 500):
            async with self.db.transaction(self.tenant_id) as uow:
                for record_id in gone[start:start + 500]:
                    await records.soft_delete(uow, connection_id=self.connection_id, entity=entity, record_id=record_id)
        return len(gone)

    async def _finish(self, entity: str, result: RunResult, high_water: datetime | None, *, full: bool,
                      pages: dict[str, list[str]] | None = None, started: datetime | None = None) -> None:
        """Record the outcome. ``pages``: the fingerprints a complete scan read, to store with the
        cache mark (only when the rows the run did not write are as the run left them)."""
        now = jsonutil.utcnow()
        async with self.db.transaction(self.tenant_id) as uow:
            mark = await self._cache_mark(uow.conn, entity)
            live = int(mark.split(":", 1)[0])
            if pages is not None and started is not None:
                touched = (await uow.conn.execute(select(func.count()).select_from(t.records).where(
                    t.records.c.connection_id == self.connection_id, t.records.c.entity == entity,
                    t.records.c.updated_at >= started))).scalar_one()
                if touched == result.created + result.updated + result.deleted:  # no other writer meanwhile
                    await self._store_pages(uow, entity, pages)
                else:
                    mark = None
            else:
                mark = None
            await self._save_run(uow, result)
            await uow.conn.execute(
                update(t.sync_runs).where(t.sync_runs.c.id == result.run_id)
                .values(status=result.status, error=result.error, finished_at=now)
            )
            if result.status == "succeeded":
                values: dict[str, Any] = {"status": "idle", "checkpoint": None, "run_id": None, "records": live,
                                          "last_success_at": now, "high_water": high_water, "cache_mark": mark}
                if full:
                    values["last_full_sync_at"] = now
                await self._save_state(uow, entity, **values)
            else:  # keep run_id and checkpoint: the retry resumes this run
                await self._save_state(uow, entity, status="failed", last_error=result.error, records=live,
                                       high_water=high_water, cache_mark=None)
            event = "connection.sync_completed" if result.status == "succeeded" else "connection.sync_failed"
            uow.emit(event, self.connection_id, {"connection_id": self.connection_id, **asdict(result)},
                     ["status"])


async def sync_states(db: Database, connection_id: str) -> dict[str, dict[str, Any]]:
    """Per-entity state for ``GET /v1/connections/{id}/sync``: status, last_success_at, last_error,
    records, lag_s (seconds since the last success, ``None`` before the first)."""
    async with db.read() as conn:
        rows = (await conn.execute(select(t.sync_states).where(t.sync_states.c.connection_id == connection_id))).all()
    now = jsonutil.utcnow()
    out = {}
    for row in rows:
        out[row.entity] = {
            "status": row.status,
            "mode": row.mode,
            "last_success_at": jsonutil.rfc3339(row.last_success_at),
            "last_full_sync_at": jsonutil.rfc3339(row.last_full_sync_at),
            "last_error": row.last_error,
            "records": row.records,
            "lag_s": None if row.last_success_at is None else round((now - row.last_success_at).total_seconds(), 3),
        }
    return out


async def sync_history(db: Database, connection_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The connection's last ``limit`` sync runs, newest first, for ``GET /v1/connections/{id}/sync``:
    ``{id, entity, mode, status, pages, seen, created, updated, unchanged, deleted, error,
    started_at, finished_at}`` (times RFC 3339; ``finished_at`` ``None`` while running)."""
    if limit <= 0:
        return []
    async with db.read() as conn:
        rows = (await conn.execute(
            select(t.sync_runs).where(t.sync_runs.c.connection_id == connection_id)
            .order_by(t.sync_runs.c.started_at.desc(), t.sync_runs.c.id.desc()).limit(limit)
        )).mappings().all()
    return [{
        "id": row["id"], "entity": row["entity"], "mode": row["mode"], "status": row["status"],
        **{name: row[name] for name in _COUNTS}, "error": row["error"],
        "started_at": jsonutil.rfc3339(row["started_at"]), "finished_at": jsonutil.rfc3339(row["finished_at"]),
    } for row in rows]
