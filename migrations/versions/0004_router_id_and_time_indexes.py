"""router_id on attempts and feedback (which process wrote a row, for shared learning), and time
indexes for refresh and pruning.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("router_id", sa.String(32), nullable=True))
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("router_id", sa.String(32), nullable=True))
    op.create_index("ix_calls_ts", "calls", ["ts"])
    op.create_index("ix_attempts_ts", "attempts", ["ts"])
    op.create_index("ix_feedback_ts", "feedback", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_feedback_ts", "feedback")
    op.drop_index("ix_attempts_ts", "attempts")
    op.drop_index("ix_calls_ts", "calls")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("router_id")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("router_id")
