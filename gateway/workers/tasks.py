"""The gateway's job kinds (registered on :data:`gateway.workers.dispatch.REGISTRY` on import).

``sync``: payload ``{"connection_id", "entity", "mode"}``; runs :class:`SyncEngine`. A retryable
vendor failure is retried after the vendor's ``Retry-After`` when it gave one (else backoff);
the sync's checkpoint makes the retry continue where the run stopped.
"""

from __future__ import annotations

from gateway.errors import VendorError
from gateway.services.sync import SyncEngine
from gateway.workers.dispatch import REGISTRY, RetryLater, WorkerContext
from gateway.workers.jobs import Job, backoff


@REGISTRY.register("sync")
async def run_sync(ctx: WorkerContext, job: Job) -> None:
    """Sync one entity of one connection."""
    connector = await ctx.services.connections.connector_for(job.tenant_id, job.payload["connection_id"])
    try:
        await SyncEngine(ctx.db, connector).run(job.payload["entity"], mode=job.payload.get("mode", "auto"))
    except VendorError as exc:
        if not exc.retryable:
            raise
        retry_after = exc.extra.get("retry_after")
        raise RetryLater(exc.detail, float(retry_after) if retry_after else backoff(job.attempts)) from exc


def sync_dedupe_key(connection_id: str, entity: str) -> str:
    """One queued or running sync per connection and entity, across every process."""
    return f"sync:{connection_id}:{entity}"
