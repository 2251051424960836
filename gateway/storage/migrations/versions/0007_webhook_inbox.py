"""webhook inbox: inbound vendor deliveries, stored before they are acknowledged

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_inbox",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("tenant_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("connection_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("vendor_event_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("event_type", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("occurred_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("received_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("processed_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["connection_id"], ["connections.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ux_webhook_inbox_event", "webhook_inbox", ["connection_id", "vendor_event_id"], unique=True)
    op.create_index("ix_webhook_inbox_status", "webhook_inbox", ["status", "received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_webhook_inbox_status", table_name="webhook_inbox")
    op.drop_index("ux_webhook_inbox_event", table_name="webhook_inbox")
    op.drop_table("webhook_inbox")
