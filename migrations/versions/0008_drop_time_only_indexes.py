"""Drop the time-only indexes of calls and attempts: every write paid for them and only pruning read
them; pruning now finds old rows through the (task_type, ts) indexes, one range per task type.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_attempts_ts", "attempts")
    op.drop_index("ix_calls_ts", "calls")


def downgrade() -> None:
    op.create_index("ix_calls_ts", "calls", ["ts"])
    op.create_index("ix_attempts_ts", "attempts", ["ts"])
