"""adjustment push: the push job and Apex intent on adjustments, the write journal (echo
suppression) and write locks

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("adjustments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True))
        batch_op.add_column(sa.Column("intent_before_milli", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("intent_target_milli", sa.BigInteger(), nullable=True))

    op.create_table(
        "write_journal",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("tenant_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("connection_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("entity", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("remote_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("delta_milli", sa.BigInteger(), nullable=False),
        sa.Column("adjustment_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("matched_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_write_journal_record", "write_journal", ["connection_id", "entity", "remote_id", "status"],
                    unique=False)
    op.create_index("ix_write_journal_adjustment", "write_journal", ["adjustment_id"], unique=False)

    op.create_table(
        "write_locks",
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("lease_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("acquired_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("write_locks")
    op.drop_index("ix_write_journal_adjustment", table_name="write_journal")
    op.drop_index("ix_write_journal_record", table_name="write_journal")
    op.drop_table("write_journal")
    with op.batch_alter_table("adjustments", schema=None) as batch_op:
        batch_op.drop_column("intent_target_milli")
        batch_op.drop_column("intent_before_milli")
        batch_op.drop_column("job_id")
