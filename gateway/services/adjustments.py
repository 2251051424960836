"""Inventory adjustments: accepted durably, pushed to the POS by a worker, visible with their status.

Quantities are stored in thousandths (``delta_milli``) and rendered as decimal strings.

Life of an adjustment to an external POS (``aipos``, ``apex``)::

    POST .../inventory/adjustments ──▶ pending ──push──▶ applied   (adjustment.applied)
          (202: row + job in one          │  ▲          failed    (adjustment.failed)
           transaction, before             └──┘
           the answer)              retryable failure: attempts + 1, last_error, retried

- :func:`accept` (the API route): the connector validates the body (unknown product or
  location, variants, fractional deltas answer 4xx before anything is stored) and calls
  :func:`store_pending`, which writes the ``pending`` row and its ``adjustment`` job in one
  transaction; the dispatcher is rung after the commit. The built-in ``local`` engine *is* the
  POS: its ``create_adjustment`` applies at once and answers ``applied`` (no job).
- The ``adjustment`` job (:func:`run_push`, registered in :mod:`gateway.workers.tasks`) calls
  the connector's ``push_adjustment(adjustment_id, final=...)`` once per attempt. A retryable
  vendor failure (5xx, 429, timeouts, the POS down, a stock row busy) records ``attempts`` and
  ``last_error`` and raises :class:`PushDeferred`; the job retries after the longer of the
  vendor's ``Retry-After`` and the job backoff, up to :data:`MAX_PUSH_ATTEMPTS` attempts (about
  20 hours). A fatal answer (insufficient stock, an unknown product at the POS) or the last
  attempt settles ``failed``. Success settles ``applied``; the connector caches the level it
  reads back, through the write journal (:mod:`gateway.services.journal`), so that read-back and
  later reports of the same state emit no ``inventory.updated``: ``adjustment.applied`` is the
  one event of the change.
- Applied once: each connector makes a retried push harmless (AI POS: the vendor's
  ``Idempotency-Key: tillgate-<adjustment id>``; Apex: the intent recorded on the row before the
  set, see ``connectors/apex/README.md``). Pushes of one stock row are serialised across processes
  (:func:`stock_lock`).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import jsonutil
from gateway.errors import NotFound, TillgateError
from gateway.ids import new_id
from gateway.sdk.http import vendor_did_not_act
from gateway.services import journal, locks
from gateway.storage import tables as t
from gateway.storage.db import Database
from gateway.storage.uow import UnitOfWork
from gateway.workers import jobs

#: The job kind that pushes one adjustment: payload ``{"adjustment_id", "connection_id"}``.
JOB_KIND = "adjustment"
#: Attempts of a push job: with the job backoff (5 s, 30 s, 2 min, 10 min, 30 min, then hourly)
#: about 20 hours of a POS being down before an adjustment is given up as ``failed``.
MAX_PUSH_ATTEMPTS = 24


class PushDeferred(Exception):
    """A push attempt reached no verdict (the POS failed retryably, or the stock row is busy):
    the adjustment stays ``pending`` with ``attempts`` and ``last_error`` recorded; retry after
    ``retry_after`` seconds when given (the vendor's ``Retry-After``), else after the job backoff."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def milli_to_str(milli: int) -> str:
    """Render thousandths of a unit as a decimal string without trailing zeros (``1250`` → ``"1.25"``)."""
    value = (Decimal(milli) / 1000).normalize()
    return format(value, "f") if value != 0 else "0"


def render_adjustment(row: Any) -> dict[str, Any]:
    """The API's Adjustment object for an ``adjustments`` row (a row object or a mapping)."""
    get = row.get if isinstance(row, Mapping) else lambda name: getattr(row, name, None)
    return {
        "id": get("id"),
        "connection_id": get("connection_id"),
        "product_id": get("product_id"),
        "variant_id": get("variant_id"),
        "location_id": get("location_id"),
        "delta": milli_to_str(get("delta_milli")),
        "reason": get("reason"),
        "reference": get("reference"),
        "link_id": get("link_id"),
        "status": get("status"),
        "attempts": get("attempts"),
        "last_error": get("last_error"),
        "applied_at": jsonutil.rfc3339(get("applied_at")),
        "created_at": jsonutil.rfc3339(get("created_at")),
        "updated_at": jsonutil.rfc3339(get("updated_at")),
    }


async def get_adjustment(conn: AsyncConnection, *, tenant_id: str, connection_id: str, adjustment_id: str) -> dict[str, Any]:
    """One adjustment of one of the tenant's connections.

    Raises:
        NotFound: no such adjustment for this tenant and connection.
    """
    row = (
        await conn.execute(
            select(t.adjustments).where(
                t.adjustments.c.id == adjustment_id,
                t.adjustments.c.tenant_id == tenant_id,
                t.adjustments.c.connection_id == connection_id,
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"no adjustment {adjustment_id!r} on this connection")
    return render_adjustment(row)


#: The statuses an adjustment list can be filtered by.
STATUSES = ("pending", "applied", "failed")


async def list_adjustments(conn: AsyncConnection, *, tenant_id: str, connection_id: str, limit: int,
                           cursor: str | None = None, status: str | None = None,
                           link_id: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """A page of one connection's adjustments, newest first (keyset on ``created_at, id``),
    optionally only one ``status`` or the adjustments one inventory link made (``link_id``).

    Returns:
        (the Adjustments, the cursor of the next page or ``None``).

    Raises:
        BadRequest: a cursor that is not one of ours (from ``decode_cursor``).
    """
    from gateway.services.records import decode_cursor, encode_cursor

    c = t.adjustments.c
    query = select(t.adjustments).where(c.tenant_id == tenant_id, c.connection_id == connection_id)
    if status is not None:
        query = query.where(c.status == status)
    if link_id is not None:
        query = query.where(c.link_id == link_id)
    if cursor:
        before_time, before_id = decode_cursor(cursor)
        query = query.where(or_(c.created_at < before_time, and_(c.created_at == before_time, c.id < before_id)))
    rows = (await conn.execute(query.order_by(c.created_at.desc(), c.id.desc()).limit(limit + 1))).mappings().all()
    more = len(rows) > limit
    rows = rows[:limit]
    return [render_adjustment(row) for row in rows], encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None


# -- accepting -------------------------------------------------------------------------------------
async def accept(connector: Any, body: Any) -> dict[str, Any]:
    """``POST .../inventory/adjustments``: ``connector.create_adjustment(body)``. The push job
    the write queued rings the dispatcher once committed (:func:`store_pending`).

    Returns:
        The Adjustment: ``pending`` for external POS connections, ``applied`` for ``local``.

    Raises:
        whatever ``create_adjustment`` raises (``ValidationFailed`` for an unknown product or
        location, a variant, a fractional delta; nothing is stored then).
    """
    return await connector.create_adjustment(body)


async def store_delta(db: Database, context: Any, *, product_id: str, location_id: str, delta: int,
                      reason: str, reference: str | None) -> dict[str, Any]:
    """Store a validated whole-unit ``delta`` (units; kept as thousandths) of a product without
    variants at one location of ``context``'s connection as a ``pending`` adjustment with its
    push job (:func:`store_pending`), in one transaction. Returns the API's Adjustment."""
    now = jsonutil.utcnow()
    values = {
        "id": new_id("adjustment"), "tenant_id": context.tenant_id, "connection_id": context.id,
        "product_id": product_id, "variant_id": None, "location_id": location_id,
        "delta_milli": delta * 1000, "reason": reason, "reference": reference, "created_at": now, "updated_at": now,
    }
    async with db.transaction(context.tenant_id) as uow:
        return await store_pending(uow, values)


async def store_pending(uow: UnitOfWork, values: dict[str, Any]) -> dict[str, Any]:
    """Write a ``pending`` adjustment (``values``: every ``adjustments`` column but ``job_id``;
    ``link_id`` optional) and its push job in ``uow``: the job exists if and only if the row does,
    and rings the dispatcher once ``uow`` committed (``UnitOfWork.jobs``; until then, or if that
    ring is lost, the sweeper finds it). Returns the Adjustment as the API shows it."""
    job_id = await jobs.enqueue_in(uow, JOB_KIND, {"adjustment_id": values["id"], "connection_id": values["connection_id"]},
                                   tenant_id=values["tenant_id"], max_attempts=MAX_PUSH_ATTEMPTS)
    row = {"link_id": None, **values, "job_id": job_id, "status": "pending", "attempts": 0, "last_error": None, "applied_at": None}
    await uow.conn.execute(insert(t.adjustments).values(**row))
    uow.jobs.append(job_id)
    return render_adjustment(row)


# -- pushing ---------------------------------------------------------------------------------------
def stock_lock(db: Database, connection_id: str, product_id: str, location_id: str, variant_id: str | None = None):
    """The write lock of one stock row (:func:`gateway.services.locks.hold`): pushes and counts of
    one (product, variant, location) of a connection run one at a time, across processes."""
    return locks.hold(db, f"stock:{connection_id}:{product_id}:{variant_id or ''}:{location_id}")


async def load(conn: AsyncConnection, connection_id: str, adjustment_id: str) -> dict[str, Any]:
    """The ``adjustments`` row (as a dict) of one adjustment of a connection.

    Raises:
        NotFound: no such adjustment on this connection.
    """
    row = (await conn.execute(select(t.adjustments).where(
        t.adjustments.c.id == adjustment_id, t.adjustments.c.connection_id == connection_id))).mappings().first()
    if row is None:
        raise NotFound(f"no adjustment {adjustment_id!r} on this connection")
    return dict(row)


async def settle(uow: UnitOfWork, adjustment_id: str, status: str, *, last_error: str | None = None,
                 attempt: bool = True) -> dict[str, Any]:
    """Record the verdict of a ``pending`` adjustment in ``uow`` and emit ``adjustment.<status>``.

    ``status``: ``applied`` or ``failed``; ``attempt``: count this as a push attempt (``False``
    when another adjustment's push found out the outcome). A ``failed`` adjustment's open journal
    entries are voided. An adjustment settled before is returned as it is, with no event.

    Returns:
        The Adjustment as rendered after the change.
    """
    row = (await uow.conn.execute(select(t.adjustments).where(t.adjustments.c.id == adjustment_id))).mappings().one()
    if row["status"] != "pending":
        return render_adjustment(row)
    now = jsonutil.utcnow()
    values = {"status": status, "last_error": last_error, "updated_at": now,
              "attempts": row["attempts"] + (1 if attempt else 0), "applied_at": now if status == "applied" else None}
    changed = await uow.conn.execute(update(t.adjustments).where(
        t.adjustments.c.id == adjustment_id, t.adjustments.c.status == "pending").values(**values))
    if not changed.rowcount:  # settled by a concurrent writer between the read and the update
        return render_adjustment((await uow.conn.execute(select(t.adjustments).where(
            t.adjustments.c.id == adjustment_id))).mappings().one())
    if status != "applied":
        await journal.close(uow, adjustment_id)
    rendered = render_adjustment({**row, **values})
    uow.emit(f"adjustment.{status}", row["connection_id"], rendered,
             ["status", "applied_at"] if status == "applied" else ["status", "last_error"])
    return rendered


async def defer(db: Database, adjustment_id: str, last_error: str, *, retry_after: float | None = None,
                unsent: bool = False) -> PushDeferred:
    """Record a push attempt that reached no verdict (``attempts`` + 1, ``last_error``; still
    ``pending``) and return the :class:`PushDeferred` for the caller to raise. ``unsent``: the
    attempt certainly did not reach the POS, so its journal entry is withdrawn in the same
    transaction (:func:`gateway.services.journal.withdraw`)."""
    async with db.transaction() as uow:
        await uow.conn.execute(update(t.adjustments).where(
            t.adjustments.c.id == adjustment_id, t.adjustments.c.status == "pending").values(
            attempts=t.adjustments.c.attempts + 1, last_error=last_error[:2000], updated_at=jsonutil.utcnow()))
        if unsent:
            await journal.withdraw(uow, adjustment_id)
    return PushDeferred(last_error, retry_after)


async def not_applied(db: Database, tenant_id: str, adjustment_id: str, error: TillgateError | str, *,
                      fatal: bool, final: bool) -> dict[str, Any]:
    """A push attempt that did not apply the adjustment. ``error``: the failure (its ``code`` and
    ``detail`` become ``last_error``) or the message itself.

    A ``fatal`` one, or any on the ``final`` attempt, settles the adjustment ``failed``
    (``adjustment.failed``) and returns it; otherwise the attempt is recorded and
    :class:`PushDeferred` raised (with the vendor's ``retry_after`` when it gave one). An attempt
    the vendor certainly did not act on (:func:`gateway.sdk.http.vendor_did_not_act`: refused
    unsent, 429, 503) withdraws its journal entry, so it is never taken for another write's echo.

    Raises:
        PushDeferred: the push will be tried again.
    """
    if isinstance(error, TillgateError):
        vendor_code = error.extra.get("vendor_code")
        message = f"{error.code}: {error.detail}" + (f" (vendor code {vendor_code})" if vendor_code else "")
        retry_after = error.extra.get("retry_after")
    else:
        message, retry_after = error, None
    if fatal or final:
        async with db.transaction(tenant_id) as uow:
            return await settle(uow, adjustment_id, "failed", last_error=message[:2000])
    raise await defer(db, adjustment_id, message, retry_after=float(retry_after) if retry_after else None,
                      unsent=vendor_did_not_act(error))


async def run_push(db: Database, connections: Any, payload: dict[str, Any], *, final: bool) -> None:
    """The ``adjustment`` job: one push attempt of ``payload["adjustment_id"]`` through its
    connection's ``push_adjustment``. An adjustment no longer ``pending`` is left alone (a
    duplicate delivery of the job). A deleted connection settles it ``failed``. An unexpected error
    is recorded on the row (``last_error``) and re-raised, so the job machinery backs off; on the
    ``final`` attempt it settles ``failed`` instead.

    Raises:
        PushDeferred: retry later (see :func:`not_applied`).
        Exception: an unexpected failure of a non-final attempt.
    """
    adjustment_id, connection_id = payload["adjustment_id"], payload["connection_id"]
    async with db.read() as conn:
        try:
            row = await load(conn, connection_id, adjustment_id)
        except NotFound:
            return
    if row["status"] != "pending":
        return
    try:
        connector = await connections.connector_for(row["tenant_id"], connection_id)
    except NotFound:
        await not_applied(db, row["tenant_id"], adjustment_id, "connection_deleted: the connection was deleted "
                          "before the adjustment reached the POS", fatal=True, final=final)
        return
    try:
        await connector.push_adjustment(adjustment_id, final=final)
    except PushDeferred:
        raise
    except Exception as exc:
        message = f"{getattr(exc, 'code', None) or exc.__class__.__name__}: {exc}"
        if final:
            async with db.read() as conn:
                now_row = await load(conn, connection_id, adjustment_id)
            if now_row["intent_target_milli"] is not None:
                message = ("outcome_unknown: a stock set was in flight when the push failed for good; it may have "
                           f"been applied ({message})")
            await not_applied(db, row["tenant_id"], adjustment_id, message, fatal=True, final=True)
            return
        await defer(db, adjustment_id, message)
        raise
