"""Helpers shared by the importers: file reading, decimal parsing, bulk lookups in the cache."""

from __future__ import annotations

import csv
import io
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select

from gateway import jsonutil
from gateway.errors import TillgateError
from gateway.importers.summary import ImportFileError
from gateway.sdk.connector import Connector
from gateway.storage import tables as t


def read_text(source: str | Path) -> str:
    """Read a UTF-8 (optionally BOM-prefixed) text file.

    Raises:
        ImportFileError: the file is missing, unreadable or not UTF-8 (latin-1 is tried as a fallback).
    """
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImportFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def csv_rows(text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Split CSV text into (header, [(line_number, fields)]) skipping blank lines.

    ``line_number`` is the physical line the row starts on (the header is line 1).

    Raises:
        ImportFileError: the text is empty or has no header row, or the CSV is unparseable.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    try:
        start = 1
        for fields in reader:
            line = start
            start = reader.line_num + 1
            if not fields or all(not f.strip() for f in fields):
                continue
            if header is None:
                header = [f.strip() for f in fields]
                continue
            rows.append((line, fields))
    except csv.Error as exc:
        raise ImportFileError(f"line {reader.line_num}: not valid CSV ({exc})") from exc
    if header is None:
        raise ImportFileError("the file is empty: expected a header row")
    return header, rows


def parse_decimal(text: str, what: str, *, places: int, minimum: Decimal | None = None) -> Decimal:
    """Parse a decimal string with at most ``places`` decimals.

    Raises:
        ValueError: with a message naming ``what`` (the row is then skipped by the caller).
    """
    raw = text.strip()
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{what} {raw!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"{what} {raw!r} is not a finite number")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > places:
        raise ValueError(f"{what} {raw!r} has more than {places} decimals")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} {raw!r} must be at least {minimum}")
    return value


def error_text(exc: BaseException) -> str:
    """A one-line description of an engine or validation error, for a skip reason."""
    if isinstance(exc, TillgateError):
        text = f"{exc.code}: {exc.detail}"
        if exc.errors:
            text += " (" + "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}" for e in exc.errors[:3]) + ")"
        return text
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors(include_url=False)[:3]
        )
    return f"{exc.__class__.__name__}: {exc}"


async def load_records(connector: Connector, entity: str) -> list[dict[str, Any]]:
    """Every live record of ``entity`` of the connector's connection, as dicts (one query)."""
    async with connector.db.read() as conn:
        rows = (
            await conn.execute(
                select(t.records.c.data).where(
                    t.records.c.connection_id == connector.context.id,
                    t.records.c.entity == entity,
                    t.records.c.deleted_at.is_(None),
                )
            )
        ).all()
    return [jsonutil.loads(row.data) for row in rows]


async def main_location_id(connector: Connector) -> str:
    """The id of the connection's location named "Main" (else its oldest location).

    Raises:
        ImportFileError: the connection has no location at all.
    """
    locations = await load_records(connector, "locations")
    if not locations:
        raise ImportFileError("the connection has no location to import stock and sales into")
    for location in sorted(locations, key=lambda r: (r["created_at"], r["id"])):
        if location.get("name") == "Main":
            return location["id"]
    return min(locations, key=lambda r: (r["created_at"], r["id"]))["id"]


async def on_hand_by_product(connector: Connector, location_id: str) -> dict[str, Decimal]:
    """Current on hand per product id (no variant) at ``location_id``, from the stock ledger table."""
    async with connector.db.read() as conn:
        rows = (
            await conn.execute(
                select(t.stock_levels.c.product_id, t.stock_levels.c.on_hand_milli).where(
                    t.stock_levels.c.connection_id == connector.context.id,
                    t.stock_levels.c.location_id == location_id,
                    t.stock_levels.c.variant_id == "",
                )
            )
        ).all()
    return {row.product_id: Decimal(row.on_hand_milli) / 1000 for row in rows}


async def stock_references(connector: Connector, prefix: str) -> set[str]:
    """Adjustment / stock movement references starting with ``prefix`` already recorded (for re-runs)."""
    pattern = prefix.replace("%", r"\%").replace("_", r"\_") + "%"
    async with connector.db.read() as conn:
        moves = (
            await conn.execute(
                select(t.stock_movements.c.reference).where(
                    t.stock_movements.c.connection_id == connector.context.id,
                    t.stock_movements.c.reference.like(pattern, escape="\\"),
                )
            )
        ).all()
        adjustments = (
            await conn.execute(
                select(t.adjustments.c.reference).where(
                    t.adjustments.c.connection_id == connector.context.id,
                    t.adjustments.c.reference.like(pattern, escape="\\"),
                    t.adjustments.c.status != "failed",
                )
            )
        ).all()
    return {row.reference for row in [*moves, *adjustments] if row.reference}
