"""call_features: the hashed prompt features of calls (indices and values, never the text), so that
contextual policies warm-start and contextual replay works without logging prompts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "call_features",
        sa.Column("call_id", sa.String(32), primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("task_type", sa.String(64), nullable=False),
        sa.Column("space", sa.String(64), nullable=False),
        sa.Column("features", sa.Text, nullable=False),
    )
    op.create_index("ix_call_features_task_ts", "call_features", ["task_type", "ts"])


def downgrade() -> None:
    op.drop_index("ix_call_features_task_ts", table_name="call_features")
    op.drop_table("call_features")
