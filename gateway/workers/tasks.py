"""The gateway's job kinds (registered on :data:`gateway.workers.dispatch.REGISTRY` on import).

``sync``: payload ``{"connection_id", "entities", "mode"}``; runs :class:`SyncEngine` over the
entities in dependency order (locations and categories before products, products and customers
before inventory and orders), one job per connection so they never run out of order. It stops
at the first failure; a retryable vendor failure is retried after the vendor's ``Retry-After``
when it gave one (else backoff). On retry the finished entities re-run as cheap hash-diffed
polls and the failed one resumes from its checkpoint.

``reconcile``: payload ``{"connection_id"}``; a full count of the connection's inventory at
the vendor compared with the cache (:meth:`SyncEngine.reconcile`): each level that drifted is
corrected with ``inventory.drift``. Queued by the scheduler every ``reconcile_interval_seconds``
and by ``POST /v1/connections/{id}/inventory/reconcile``; one per connection (dedupe key
``reconcile:<connection>``). Retried like ``sync``; a retry counts again from the start.

``webhook``: payload ``{"inbox_id"}``; applies one stored inbound vendor delivery
(:func:`gateway.services.inbox.process`). Registered with ``hold_commit``: the cache write, the
inbox row ``processed`` and the job ``done`` commit in one transaction.

``adjustment``: payload ``{"adjustment_id", "connection_id"}``; one push of a ``pending``
inventory adjustment to its POS (:func:`gateway.services.adjustments.run_push`). A push that
reached no verdict is retried after the longer of the vendor's ``Retry-After`` and the backoff;
the last attempt (``MAX_PUSH_ATTEMPTS``) settles it ``failed``.
"""

from __future__ import annotations

from gateway.errors import VendorError
from gateway.services import adjustments, inbox
from gateway.services.sync import ENTITY_ORDER, SyncEngine
from gateway.workers.dispatch import REGISTRY, RetryLater, WorkerContext
from gateway.workers.jobs import Job, backoff

RECONCILE_JOB = "reconcile"


def _retry_later(exc: VendorError, job: Job) -> RetryLater:
    """A retryable vendor failure as a :class:`RetryLater`: after the vendor's ``Retry-After``
    (seconds) when it gave one, else the job backoff."""
    retry_after = exc.extra.get("retry_after")
    return RetryLater(exc.detail, float(retry_after) if retry_after else backoff(job.attempts))


@REGISTRY.register("sync")
async def run_sync(ctx: WorkerContext, job: Job) -> None:
    """Sync the listed entities of one connection, in dependency order."""
    connector = await ctx.services.connections.connector_for(job.tenant_id, job.payload["connection_id"])
    engine = SyncEngine(ctx.db, connector)
    wanted = set(job.payload["entities"])
    try:
        for entity in [e for e in ENTITY_ORDER if e in wanted]:
            await engine.run(entity, mode=job.payload.get("mode", "auto"))
    except VendorError as exc:
        if not exc.retryable:
            raise
        raise _retry_later(exc, job) from exc


@REGISTRY.register(RECONCILE_JOB)
async def run_reconcile(ctx: WorkerContext, job: Job) -> None:
    """Count one connection's inventory at the vendor and report drift (payload ``{"connection_id"}``)."""
    connector = await ctx.services.connections.connector_for(job.tenant_id, job.payload["connection_id"])
    try:
        await SyncEngine(ctx.db, connector).reconcile("inventory")
    except VendorError as exc:
        if not exc.retryable:
            raise
        raise _retry_later(exc, job) from exc


@REGISTRY.register(inbox.JOB_KIND, hold_commit=True)
async def run_webhook(ctx: WorkerContext, job: Job) -> None:
    """Apply one stored inbound delivery (payload ``{"inbox_id"}``) to the records cache; a
    retryable vendor failure is retried after its ``Retry-After`` (else backoff)."""
    try:
        await inbox.process(ctx.db, ctx.services.connections, job.payload["inbox_id"], attempt=job.attempts,
                            last_attempt=job.attempts >= job.max_attempts)
    except VendorError as exc:
        if not exc.retryable:
            raise
        raise _retry_later(exc, job) from exc


@REGISTRY.register(adjustments.JOB_KIND)
async def run_adjustment(ctx: WorkerContext, job: Job) -> None:
    """Push one pending adjustment (payload ``{"adjustment_id", "connection_id"}``) to its POS."""
    try:
        await adjustments.run_push(ctx.db, ctx.services.connections, job.payload,
                                   final=job.attempts >= job.max_attempts)
    except adjustments.PushDeferred as exc:
        raise RetryLater(str(exc), max(exc.retry_after or 0.0, backoff(job.attempts))) from exc


def sync_dedupe_key(connection_id: str) -> str:
    """One queued or running sync per connection, across every process."""
    return f"sync:{connection_id}"


def reconcile_dedupe_key(connection_id: str) -> str:
    """One queued or running reconciliation per connection, across every process."""
    return f"reconcile:{connection_id}"
