"""The poll scheduler: queues a sync job for every (connection, entity) whose poll is due.

A poll is due when the entity has never started a sync, or its last start is at least the
connection's ``poll_interval_seconds`` setting ago (default :data:`DEFAULT_POLL_SECONDS`).
One job per connection covers its due entities (in dependency order); jobs carry the dedupe key
``sync:<connection>``, so schedulers running in several processes at once queue each poll once. Connectors that keep their cache themselves (no
``fetch``, such as ``local``) are never polled.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from gateway import jsonutil
from gateway.sdk.connector import Connector
from gateway.services.sync import ENTITY_ORDER
from gateway.storage import tables as t
from gateway.workers.tasks import sync_dedupe_key

DEFAULT_POLL_SECONDS = 300


async def schedule_polls(services: Any) -> int:
    """Queue every due poll through ``services.dispatcher``; return how many jobs were created."""
    db, dispatcher = services.db, services.dispatcher
    if dispatcher is None:
        return 0
    async with db.read() as conn:
        connections = (
            await conn.execute(
                select(t.connections.c.id, t.connections.c.tenant_id, t.connections.c.connector,
                       t.connections.c.settings).where(t.connections.c.deleted_at.is_(None))
            )
        ).all()
        started = {
            (row.connection_id, row.entity): row.last_started_at
            for row in (await conn.execute(
                select(t.sync_states.c.connection_id, t.sync_states.c.entity, t.sync_states.c.last_started_at)
            )).all()
        }
    now = jsonutil.utcnow()
    created = 0
    for row in connections:
        try:
            cls = services.registry.get(row.connector)
        except Exception:  # noqa: BLE001 - a connection whose plugin was uninstalled is not polled
            continue
        if cls.fetch is Connector.fetch:
            continue
        interval = jsonutil.loads(row.settings).get("poll_interval_seconds", DEFAULT_POLL_SECONDS)
        capabilities = cls.manifest.get("capabilities", {})
        due = []
        for entity in ENTITY_ORDER:
            if not capabilities.get(entity, {}).get("read"):
                continue
            last = started.get((row.id, entity))
            if last is None or (now - last).total_seconds() >= interval:
                due.append(entity)
        if due:
            _, new = await dispatcher.submit(
                "sync", {"connection_id": row.id, "entities": due, "mode": "auto"},
                tenant_id=row.tenant_id, dedupe_key=sync_dedupe_key(row.id),
            )
            created += new
    return created
