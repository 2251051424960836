"""write journal: ``uncertain`` (an earlier attempt of the write may have landed)

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("write_journal", schema=None) as batch_op:
        batch_op.add_column(sa.Column("uncertain", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("write_journal", schema=None) as batch_op:
        batch_op.drop_column("uncertain")
