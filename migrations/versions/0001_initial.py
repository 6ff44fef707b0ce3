"""The outcome log: calls, attempts, feedback.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_id", sa.String(32), primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("task_type", sa.String(64), nullable=False),
        sa.Column("policy", sa.String(32), nullable=False),
        sa.Column("propensity", sa.Float, nullable=False),
        sa.Column("ranking", sa.Text, nullable=False),
        sa.Column("model", sa.String(128)),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("latency_s", sa.Float, nullable=False),
        sa.Column("tokens_in", sa.Integer, nullable=False),
        sa.Column("tokens_out", sa.Integer, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column("n_attempts", sa.Integer, nullable=False),
        sa.Column("prompt", sa.Text),
        sa.Column("answer", sa.Text),
    )
    op.create_index("ix_calls_task_ts", "calls", ["task_type", "ts"])
    op.create_table(
        "attempts",
        sa.Column("call_id", sa.String(32), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("task_type", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("latency_s", sa.Float, nullable=False),
        sa.Column("tokens_in", sa.Integer, nullable=False),
        sa.Column("tokens_out", sa.Integer, nullable=False),
        sa.Column("cost", sa.Float, nullable=False),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_attempts_task_ts", "attempts", ["task_type", "ts"])
    op.create_table(
        "feedback",
        sa.Column("call_id", sa.String(32), primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("task_type", sa.String(64), nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("accuracy", sa.Float, nullable=False),
    )
    op.create_index("ix_feedback_task_ts", "feedback", ["task_type", "ts"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("attempts")
    op.drop_table("calls")
