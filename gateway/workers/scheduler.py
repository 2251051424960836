"""The scheduler: queues a sync job for every (connection, entity) whose poll is due, and a
reconcile job for every connection whose inventory count is due.

A poll is due when the entity has never started a sync, or its last start is at least the
connection's ``poll_interval_seconds`` setting ago (default :data:`DEFAULT_POLL_SECONDS`).
One job per connection covers its due entities (in dependency order); jobs carry the dedupe key
``sync:<connection>``, so schedulers running in several processes at once queue each poll once. Connectors that keep their cache themselves (no
``fetch``, such as ``local``) are never polled.

A reconciliation (a full inventory count, :meth:`gateway.services.sync.SyncEngine.reconcile`)
is due for a connection that reads inventory from its vendor once its inventory has had a full
sync and ``reconcile_interval_seconds`` (default :data:`DEFAULT_RECONCILE_SECONDS`; ``0``: never
on a schedule) have passed since its last count started, or since the connection was created
when it has not been counted yet. Dedupe key ``reconcile:<connection>``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from gateway import jsonutil
from gateway.sdk.connector import Connector
from gateway.services.sync import ENTITY_ORDER
from gateway.storage import tables as t
from gateway.workers.tasks import RECONCILE_JOB, reconcile_dedupe_key, sync_dedupe_key

DEFAULT_POLL_SECONDS = 300
DEFAULT_RECONCILE_SECONDS = 3600


async def schedule_polls(services: Any) -> int:
    """Queue every due poll and reconciliation through ``services.dispatcher``; return how many
    jobs were created."""
    db, dispatcher = services.db, services.dispatcher
    if dispatcher is None:
        return 0
    async with db.read() as conn:
        connections = (
            await conn.execute(
                select(t.connections.c.id, t.connections.c.tenant_id, t.connections.c.connector,
                       t.connections.c.settings, t.connections.c.created_at).where(t.connections.c.deleted_at.is_(None))
            )
        ).all()
        states = {
            (row.connection_id, row.entity): row
            for row in (await conn.execute(
                select(t.sync_states.c.connection_id, t.sync_states.c.entity, t.sync_states.c.last_started_at,
                       t.sync_states.c.last_full_sync_at)
            )).all()
        }
        counted = dict((await conn.execute(
            select(t.sync_runs.c.connection_id, func.max(t.sync_runs.c.started_at))
            .where(t.sync_runs.c.mode == "reconcile").group_by(t.sync_runs.c.connection_id)
        )).all())
    now = jsonutil.utcnow()
    created = 0
    for row in connections:
        try:
            cls = services.registry.get(row.connector)
        except Exception:  # noqa: BLE001 - a connection whose plugin was uninstalled is not polled
            continue
        if cls.fetch is Connector.fetch:
            continue
        settings = jsonutil.loads(row.settings)
        interval = settings.get("poll_interval_seconds", DEFAULT_POLL_SECONDS)
        capabilities = cls.manifest.get("capabilities", {})
        due = []
        for entity in ENTITY_ORDER:
            if not capabilities.get(entity, {}).get("read"):
                continue
            state = states.get((row.id, entity))
            last = None if state is None else state.last_started_at
            if last is None or (now - last).total_seconds() >= interval:
                due.append(entity)
        if due:
            _, new = await dispatcher.submit(
                "sync", {"connection_id": row.id, "entities": due, "mode": "auto"},
                tenant_id=row.tenant_id, dedupe_key=sync_dedupe_key(row.id),
            )
            created += new
        every = settings.get("reconcile_interval_seconds", DEFAULT_RECONCILE_SECONDS)
        inventory = states.get((row.id, "inventory"))
        if (every and capabilities.get("inventory", {}).get("read") and inventory is not None
                and inventory.last_full_sync_at is not None
                and (now - (counted.get(row.id) or row.created_at)).total_seconds() >= every):
            _, new = await dispatcher.submit(RECONCILE_JOB, {"connection_id": row.id}, tenant_id=row.tenant_id,
                                             dedupe_key=reconcile_dedupe_key(row.id))
            created += new
    return created
