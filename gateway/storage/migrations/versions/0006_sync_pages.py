"""page fingerprints of the last full scan, and the cache mark that keeps them valid

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sync_pages",
        sa.Column("connection_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("entity", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("remote_ids", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"]),
        sa.PrimaryKeyConstraint("connection_id", "entity", "fingerprint"),
    )
    with op.batch_alter_table("sync_states", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cache_mark", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_states", schema=None) as batch_op:
        batch_op.drop_column("cache_mark")
    op.drop_table("sync_pages")
