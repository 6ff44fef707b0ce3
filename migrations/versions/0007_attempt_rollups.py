"""attempt_rollups: per task type, model, hour and teaching key, the attempts' count and sums, kept by
the writer in each batch's transaction, so that a warm start reads them instead of every attempt.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from zeta_adaptive._store import rebuild_rollups

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "attempt_rollups",
        sa.Column("task_type", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("bucket", sa.Integer, primary_key=True),
        sa.Column("outcome", sa.String(16), primary_key=True),
        sa.Column("status", sa.Integer, primary_key=True),
        sa.Column("unknown_model", sa.Integer, primary_key=True),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("lat_sum", sa.Float, nullable=False),
        sa.Column("loglat_sum", sa.Float, nullable=False),
        sa.Column("loglat_sq", sa.Float, nullable=False),
        sa.Column("cost_sum", sa.Float, nullable=False),
    )
    rebuild_rollups(op.get_bind())  # the backfill: one GROUP BY over the attempts logged so far


def downgrade() -> None:
    op.drop_table("attempt_rollups")
