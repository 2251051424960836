"""receipt counters of the local engine

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "receipt_counters",
        sa.Column("connection_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"]),
        sa.PrimaryKeyConstraint("connection_id"),
    )
    # Existing local connections continue after the orders they already have.
    op.execute(
        "INSERT INTO receipt_counters (connection_id, last_number) "
        "SELECT c.id, (SELECT COUNT(*) FROM records r WHERE r.connection_id = c.id AND r.entity = 'orders') "
        "FROM connections c WHERE c.connector = 'local'"
    )


def downgrade() -> None:
    op.drop_table("receipt_counters")
