"""The write journal: echo suppression for the gateway's own stock writes to a POS.

When the gateway changes stock at an external POS (an adjustment pushed by the worker), the POS
reports the new level back: the read-back right after the write, an AI POS webhook
(``inventory.low`` makes the connector fetch the level), the next poll. Each of those would
otherwise update the cached ``inventory`` record and emit ``inventory.updated`` as if the POS had
changed on its own; a consumer that mirrors stock (an ecommerce store that adjusts the POS for
its own sales) would see its own write come back as an external change, the echo loop. The
gateway announces its own write once, with ``adjustment.applied``; the level it leads to is
cached without an event.

How (``write_journal``, one entry per adjustment and stock level):

- **Journal before the POS can report.** Right before the vendor call that changes stock (under
  the stock row's lock), the writer records the change it makes to ``on_hand``
  (:func:`expect`: ``delta_milli``). The entry is ``open`` until ``expires_at`` (:func:`window`:
  at least :data:`MIN_WINDOW` and two poll intervals, so the poll after a write falls inside it).
- **Match by value, relative to what consumers were told.** Every cache write of an inventory
  record goes through :func:`gateway.services.records.upsert_many`, which hands the records it is
  about to *update* (an existing record whose content changed) to :func:`absorb`. A report is an
  echo when its ``on_hand`` equals the cached ``on_hand`` plus the deltas of some of the record's
  open, unexpired entries, and no field but
  ``on_hand`` and ``available`` (derived from it) changed. Which entries: the explanation that
  assumes the fewest writes of unknown outcome (:func:`explaining`): the writes known to have
  landed (their adjustment is ``applied``) are taken first, oldest first, since pushes of a stock
  row land one at a time, in order; writes still pending (in flight, or an attempt that got no
  answer while the POS was failing) may never land, and taking one for another write's echo would
  consume its entry and let its own echo through later; among those, the latest attempts are
  taken first. An attempt refused unsent (the POS down: connection refused, 503, 429) withdraws
  its entry (:func:`withdraw`), so only attempts whose outcome is truly unknown stay candidates.
  So the report is explained by the
  gateway's writes alone. A level that also
  carries a sale at the till since the last report (the cache was behind), a new threshold, or
  any other change is a genuine change and emits ``inventory.updated`` as usual, with the new
  ``on_hand`` and ``available``: consumers never miss a POS-side change folded into an echo.
- **Consumed once.** The entries a match used become ``matched``; the echo is written (the
  cache is current) without an event. A later identical report is unchanged content and emits
  nothing anyway.
- **Closed when the write resolves.** The transaction recording a write's outcome reads the
  level back; if that read-back was not an echo (the POS was in a state the write does not
  explain, and that state is now cached with its event), the write's entry is ``void``
  (:func:`close`). A write that failed voids its entry. Only a write whose read-back failed, or
  whose outcome is not known yet, leaves its entry open for the webhook or poll that brings it.

Entities journaled: :data:`ENTITIES` (inventory). A record new to the cache is never an echo
(consumers have not seen it). Residual risk, small by design: while an entry is open (from just
before the vendor call until its first report, within its window), a change at the POS by
exactly the journaled delta with nothing else in between would be taken for the echo.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import delete, insert, select, update

from gateway import jsonutil
from gateway.ids import new_id
from gateway.storage import tables as t
from gateway.storage.uow import UnitOfWork

#: Entities whose cache writes are checked against the journal.
ENTITIES = frozenset({"inventory"})
#: The field a journaled write changes, and the fields derived from it.
QUANTITY = "on_hand"
DERIVED = frozenset({"available"})
#: The shortest time an entry waits for its echo.
MIN_WINDOW = timedelta(minutes=15)
#: Closed and expired entries are deleted this long after they expire.
KEEP_AFTER_EXPIRY = timedelta(days=1)


def window(settings: dict[str, Any]) -> timedelta:
    """How long an entry waits for its echo on a connection: ``max(MIN_WINDOW, 2 x
    poll_interval_seconds)`` (seconds; the default poll interval is 300)."""
    try:
        interval = float(settings.get("poll_interval_seconds") or 300)
    except (TypeError, ValueError):
        interval = 300.0
    return max(MIN_WINDOW, timedelta(seconds=2 * interval))


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def _same(a: Any, b: Any) -> bool:
    """Equal as stored JSON values, decimal strings compared by value (``"15"`` == ``"15.000"``)."""
    if a == b:
        return True
    da, db = _decimal(a), _decimal(b)
    return da is not None and db is not None and da == db


#: Most open entries of one level whose outcome is unknown that are searched as subsets.
MAX_SUBSET_ENTRIES = 12


def explaining(cached: dict[str, Any], incoming: dict[str, Any], deltas_milli: list[int],
               landed: frozenset[int] | set[int] = frozenset(), required: int = 0) -> tuple[int, ...]:
    """Which of ``deltas_milli`` (a stock level's open entries, oldest first) explain the change
    from ``cached`` to ``incoming`` (entity fields, quantities as decimal strings): indexes of
    entries whose deltas sum to ``incoming.on_hand - cached.on_hand`` (thousandths), when no field
    but ``on_hand`` and ``available`` differs; ``()`` when none does (a genuine change).

    ``landed``: the indexes of entries whose write is known to have reached the POS (their
    adjustment is ``applied``: the push being recorded, or one whose read-back failed); the others
    are writes whose outcome is not known yet (in flight, or an attempt that got no answer while
    the POS was down), which may never land. ``required``: how many of the landed entries, oldest
    first, landed before the report was read, so the report includes them.

    The explanation that assumes the fewest writes of unknown outcome wins: a report is explained
    by the writes known to have landed before it is put down to writes that may never have
    happened (taking those would consume their entries, and their own echo would later come back
    as news). Among landed entries a prefix is taken (at least the ``required`` ones), the longest
    first (pushes of a row land one at a time, in order); entries of unknown outcome are taken as
    a subset among the :data:`MAX_SUBSET_ENTRIES` latest of them, the latest attempts first on a
    tie: a report most likely carries the attempt made just before it (``deltas_milli`` is in the
    order of each entry's latest attempt), while an older attempt of unknown outcome was often
    made while the POS was failing and never landed.
    """
    for key in set(cached) | set(incoming):
        if key != QUANTITY and key not in DERIVED and not _same(incoming.get(key), cached.get(key)):
            return ()
    before, after = _decimal(cached.get(QUANTITY)), _decimal(incoming.get(QUANTITY))
    if before is None or after is None:
        return ()
    wanted = (after - before) * 1000
    known = [i for i in range(len(deltas_milli)) if i in landed]
    unknown = [i for i in reversed(range(len(deltas_milli))) if i not in landed][:MAX_SUBSET_ENTRIES]
    prefix_sums = list(itertools.accumulate((deltas_milli[i] for i in known), initial=0))
    for size in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, size):  # lexicographic: the latest attempts first
            rest = wanted - sum(deltas_milli[i] for i in chosen)
            for k in range(len(known), min(required, len(known)) - 1, -1):
                if prefix_sums[k] == rest and (k or size):
                    return tuple(sorted(known[:k] + list(chosen)))
    return ()


def explained(cached: dict[str, Any], incoming: dict[str, Any], deltas_milli: list[int],
              landed: frozenset[int] | set[int] = frozenset()) -> int:
    """How many of ``deltas_milli`` explain the change (see :func:`explaining`); 0: a genuine change."""
    return len(explaining(cached, incoming, deltas_milli, landed))


async def expect(uow: UnitOfWork, *, connection_id: str, remote_id: str, delta_milli: int, adjustment_id: str,
                 ttl: timedelta, entity: str = "inventory") -> None:
    """Journal, right before the vendor call, that ``adjustment_id`` changes the on hand of the
    cached stock level ``remote_id`` by ``delta_milli`` thousandths.

    One entry per adjustment and level: a later call (the next attempt of the push) opens it
    again with a new ``created_at`` and ``expires_at = now + ttl``, unless a report of it was
    already matched (the write landed; the echo came). An entry still open when the next attempt
    starts was left so by an attempt whose outcome is unknown (a timeout, a lost answer, a crash:
    attempts refused unsent are :func:`withdraw`-n), so it becomes ``uncertain``: that earlier
    attempt may still land or report, and a later attempt refused unsent does not withdraw it.
    Also deletes the connection's entries that expired :data:`KEEP_AFTER_EXPIRY` ago.
    """
    now = jsonutil.utcnow()
    found = (await uow.conn.execute(select(
        t.write_journal.c.id, t.write_journal.c.status, t.write_journal.c.uncertain).where(
        t.write_journal.c.adjustment_id == adjustment_id, t.write_journal.c.remote_id == remote_id,
        t.write_journal.c.connection_id == connection_id))).first()
    values = {"delta_milli": delta_milli, "status": "open", "created_at": now, "expires_at": now + ttl,
              "matched_at": None}
    if found is not None:
        if found.status == "matched":
            return
        values["uncertain"] = bool(found.uncertain) or found.status == "open"
        await uow.conn.execute(update(t.write_journal).where(t.write_journal.c.id == found.id).values(**values))
    else:
        await uow.conn.execute(insert(t.write_journal).values(
            id=new_id("journal_entry"), tenant_id=uow.tenant_id, connection_id=connection_id, entity=entity,
            remote_id=remote_id, adjustment_id=adjustment_id, **values))
    await uow.conn.execute(delete(t.write_journal).where(
        t.write_journal.c.connection_id == connection_id, t.write_journal.c.expires_at < now - KEEP_AFTER_EXPIRY))


async def withdraw(uow: UnitOfWork, adjustment_id: str) -> None:
    """The attempt just journaled by :func:`expect` certainly did not reach the POS (refused
    unsent: the connection was refused, the circuit breaker was open, the vendor answered 429 or
    503; see :func:`gateway.sdk.http.vendor_did_not_act`): void the adjustment's open entries,
    unless an earlier attempt's outcome is unknown (``uncertain``), which may still report.

    Without this, the entries of attempts made while the POS was down would stay open, each a
    candidate explanation of another write's echo; taking the wrong one consumes an entry whose
    write has not landed, and that write's own echo later comes back as news.
    """
    await uow.conn.execute(update(t.write_journal).where(
        t.write_journal.c.adjustment_id == adjustment_id, t.write_journal.c.status == "open",
        t.write_journal.c.uncertain.is_(False)).values(status="void"))


async def close(uow: UnitOfWork, adjustment_id: str) -> None:
    """Void the still-open entries of ``adjustment_id`` (its write did not happen, or the POS was
    read back in a state the write does not explain)."""
    await uow.conn.execute(update(t.write_journal).where(
        t.write_journal.c.adjustment_id == adjustment_id, t.write_journal.c.status == "open").values(status="void"))


async def absorb(uow: UnitOfWork, *, connection_id: str, entity: str,
                 updates: dict[str, tuple[dict[str, Any], dict[str, Any], datetime | None]],
                 ) -> dict[str, list[tuple[str | None, int]]]:
    """Which of the record updates about to be written are echoes of the gateway's own writes
    (see the module docstring for the rule).

    Args:
        updates: remote id -> (cached entity fields, incoming entity fields, the report's
            ``remote_updated_at``) of records whose content changed (JSON types: quantities as
            decimal strings). An entry whose adjustment was ``applied`` at or before that version
            (both in the gateway's clock for Apex, whose rows are stamped with their read time;
            the vendor's for AI POS) is in the report: it must be part of the explanation, and a
            report that is a genuine change consumes it too (``void``: the level consumers are
            told of includes it), so it never stays open to be taken for a later write's echo.

    Returns:
        the remote ids that are echoes (write them without an event), each with the
        ``(adjustment id, delta_milli)`` of the entries its match used, oldest first; those entries
        are marked ``matched`` in ``uow``.
    """
    if entity not in ENTITIES or not updates:
        return {}
    now = jsonutil.utcnow()
    entries: dict[str, list[Any]] = {}
    remote_ids = list(updates)
    for start in range(0, len(remote_ids), 500):
        rows = (await uow.conn.execute(select(
            t.write_journal.c.id, t.write_journal.c.remote_id, t.write_journal.c.delta_milli,
            t.write_journal.c.adjustment_id, t.write_journal.c.created_at,
            (t.adjustments.c.status == "applied").label("landed"), t.adjustments.c.applied_at).select_from(t.write_journal.outerjoin(
                t.adjustments, t.adjustments.c.id == t.write_journal.c.adjustment_id)).where(
            t.write_journal.c.connection_id == connection_id, t.write_journal.c.entity == entity,
            t.write_journal.c.remote_id.in_(remote_ids[start:start + 500]), t.write_journal.c.status == "open",
            t.write_journal.c.expires_at > now))).all()
        for row in rows:
            entries.setdefault(row.remote_id, []).append(row)
    echoes: dict[str, list[tuple[str | None, int]]] = {}
    used: list[str] = []
    included: list[str] = []
    for remote_id, open_entries in entries.items():
        open_entries.sort(key=lambda e: (e.created_at, e.id))
        cached, incoming, version = updates[remote_id]
        landed = [e for e in open_entries if e.landed]
        required = 0
        if version is not None:
            for n, e in enumerate(landed, start=1):
                if e.applied_at is not None and _aware(e.applied_at) <= _aware(version):
                    required = n
        chosen = [open_entries[i] for i in explaining(
            cached, incoming, [e.delta_milli for e in open_entries],
            {i for i, e in enumerate(open_entries) if e.landed}, required)]
        if chosen:
            echoes[remote_id] = [(e.adjustment_id, e.delta_milli) for e in chosen]
            used += [e.id for e in chosen]
        else:
            included += [e.id for e in landed[:required]]
    if used:
        await uow.conn.execute(update(t.write_journal).where(t.write_journal.c.id.in_(used))
                               .values(status="matched", matched_at=now))
    if included:
        await uow.conn.execute(update(t.write_journal).where(t.write_journal.c.id.in_(included))
                               .values(status="void"))
    return echoes


def _aware(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (SQLite hands back naive ones)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def open_remote_ids(uow: UnitOfWork, *, connection_id: str, entity: str, remote_ids: list[str]) -> set[str]:
    """Which of ``remote_ids`` have an open, unexpired entry: a gateway write to them is in
    flight (journaled, its echo not seen yet). The reconciliation count never calls their change
    drift (:func:`gateway.services.records.upsert_many` with ``reconcile``)."""
    now = jsonutil.utcnow()
    found: set[str] = set()
    for start in range(0, len(remote_ids), 500):
        found.update((await uow.conn.execute(select(t.write_journal.c.remote_id).where(
            t.write_journal.c.connection_id == connection_id, t.write_journal.c.entity == entity,
            t.write_journal.c.remote_id.in_(remote_ids[start:start + 500]), t.write_journal.c.status == "open",
            t.write_journal.c.expires_at > now))).scalars())
    return found


async def entries_of(conn: Any, adjustment_id: str) -> list[dict[str, Any]]:
    """The journal entries of one adjustment (for status pages and tests), oldest first."""
    rows = (await conn.execute(select(t.write_journal).where(t.write_journal.c.adjustment_id == adjustment_id)
                               .order_by(t.write_journal.c.created_at))).mappings().all()
    return [dict(row) for row in rows]
