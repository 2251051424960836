"""sku index of product and variant SKUs

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import json

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sku_index = op.create_table(
        "sku_index",
        sa.Column("connection_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("sku", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("record_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("variant_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"]),
        sa.PrimaryKeyConstraint("connection_id", "sku", "record_id", "variant_id"),
    )
    op.create_index("ix_sku_index_record", "sku_index", ["record_id"], unique=False)
    # Index the SKUs of products already cached.
    bind = op.get_bind()
    products = bind.execute(sa.text(
        "SELECT id, connection_id, data FROM records WHERE entity = 'products' AND deleted_at IS NULL"))
    rows = []
    for record_id, connection_id, data in products:
        body = json.loads(data)
        skus = {(body["sku"], "")} if body.get("sku") else set()
        skus |= {(v["sku"], v["id"]) for v in body.get("variants") or [] if v.get("sku")}
        rows += [{"connection_id": connection_id, "sku": sku, "record_id": record_id, "variant_id": variant}
                 for sku, variant in skus]
    if rows:
        op.bulk_insert(sku_index, rows)


def downgrade() -> None:
    op.drop_index("ix_sku_index_record", table_name="sku_index")
    op.drop_table("sku_index")
