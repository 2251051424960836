"""inventory links: linked stock locations, adjustments.link_id, barcodes in the identifier index

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import json

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_MAX = 64  # the index column's width; longer identifiers are not indexed


def _identifiers(body: dict) -> set[tuple[str, str, str]]:
    """(kind, identifier, variant id) of a product body, as ``records._index_skus`` writes them."""
    found: set[tuple[str, str, str]] = set()
    for kind in ("sku", "barcode"):
        if body.get(kind):
            found.add((kind, body[kind], ""))
        found |= {(kind, v[kind], v["id"]) for v in body.get("variants") or [] if v.get(kind) and v.get("id")}
    return {item for item in found if isinstance(item[1], str) and len(item[1]) <= _MAX}


def _create_index_table(kind_column: bool) -> sa.Table:
    columns = [sa.Column("connection_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False)]
    if kind_column:
        columns.append(sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False))
    columns += [
        sa.Column("sku", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("record_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("variant_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"]),
    ]
    key = ["connection_id", "kind", "sku", "record_id", "variant_id"] if kind_column else [
        "connection_id", "sku", "record_id", "variant_id"]
    table = op.create_table("sku_index", *columns, sa.PrimaryKeyConstraint(*key))
    op.create_index("ix_sku_index_record", "sku_index", ["record_id"], unique=False)
    return table


def _rebuild_index(kind_column: bool) -> None:
    """The index is derived data: drop it and build it again from the cached products."""
    op.drop_index("ix_sku_index_record", table_name="sku_index")
    op.drop_table("sku_index")
    table = _create_index_table(kind_column)
    rows = []
    products = op.get_bind().execute(sa.text(
        "SELECT id, connection_id, data FROM records WHERE entity = 'products' AND deleted_at IS NULL"))
    for record_id, connection_id, data in products:
        for kind, identifier, variant_id in sorted(_identifiers(json.loads(data))):
            if kind_column or kind == "sku":
                row = {"connection_id": connection_id, "sku": identifier, "record_id": record_id,
                       "variant_id": variant_id}
                rows.append({**row, "kind": kind} if kind_column else row)
    if rows:
        op.bulk_insert(table, rows)


def upgrade() -> None:
    with op.batch_alter_table("adjustments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("link_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))

    op.create_table(
        "inventory_links",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("tenant_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("match_by", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("unmatched_count", sa.BigInteger(), nullable=False),
        sa.Column("last_unmatched", sa.Text(), nullable=True),
        sa.Column("last_unmatched_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_inventory_links_tenant_id"), "inventory_links", ["tenant_id"], unique=False)
    op.create_table(
        "inventory_link_members",
        sa.Column("link_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("connection_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("location_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("tenant_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"]),
        sa.ForeignKeyConstraint(["link_id"], ["inventory_links.id"]),
        sa.PrimaryKeyConstraint("link_id", "connection_id", "location_id"),
    )
    op.create_index("ux_inventory_link_members_location", "inventory_link_members", ["connection_id", "location_id"],
                    unique=True)
    _rebuild_index(kind_column=True)


def downgrade() -> None:
    _rebuild_index(kind_column=False)
    op.drop_index("ux_inventory_link_members_location", table_name="inventory_link_members")
    op.drop_table("inventory_link_members")
    op.drop_index(op.f("ix_inventory_links_tenant_id"), table_name="inventory_links")
    op.drop_table("inventory_links")
    with op.batch_alter_table("adjustments", schema=None) as batch_op:
        batch_op.drop_column("link_id")
