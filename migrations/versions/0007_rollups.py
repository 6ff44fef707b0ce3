"""attempt_rollups and feedback_rollups: per task type, model and hour (and, for attempts, what the
warm start's rule reads), the rows' count and sums, kept by the writer in each batch's transaction,
so that a warm start reads them instead of every attempt and rating.

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
    op.create_table(
        "feedback_rollups",
        sa.Column("task_type", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("bucket", sa.Integer, primary_key=True),
        sa.Column("acc_n", sa.Integer, nullable=False),
        sa.Column("acc_sum", sa.Float, nullable=False),
    )
    for table in ("attempts", "feedback"):  # the backfill: one GROUP BY over each table's rows so far
        rebuild_rollups(op.get_bind(), table)


def downgrade() -> None:
    op.drop_table("feedback_rollups")
    op.drop_table("attempt_rollups")
