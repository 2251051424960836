"""Inventory adjustments as the API shows them (the ``adjustments`` table).

Quantities are stored in thousandths (``delta_milli``) and rendered as decimal strings.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import jsonutil
from gateway.errors import NotFound
from gateway.storage import tables as t


def milli_to_str(milli: int) -> str:
    """Render thousandths of a unit as a decimal string without trailing zeros (``1250`` → ``"1.25"``)."""
    value = (Decimal(milli) / 1000).normalize()
    return format(value, "f") if value != 0 else "0"


def render_adjustment(row: Any) -> dict[str, Any]:
    """The API's Adjustment object for an ``adjustments`` row."""
    return {
        "id": row.id,
        "connection_id": row.connection_id,
        "product_id": row.product_id,
        "variant_id": row.variant_id,
        "location_id": row.location_id,
        "delta": milli_to_str(row.delta_milli),
        "reason": row.reason,
        "reference": row.reference,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "applied_at": jsonutil.rfc3339(row.applied_at),
        "created_at": jsonutil.rfc3339(row.created_at),
        "updated_at": jsonutil.rfc3339(row.updated_at),
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
