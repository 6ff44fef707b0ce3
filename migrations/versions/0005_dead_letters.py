"""dead_letters: log rows the database refused for a reason other than connectivity, kept with the
database's error so that the rest of the log goes on and nothing is silently lost.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("table_name", sa.String(32), nullable=False),
        sa.Column("row_key", sa.String(64), nullable=False),
        sa.Column("row", sa.Text, nullable=False),
        sa.Column("error", sa.Text, nullable=False),
        sa.UniqueConstraint("table_name", "row_key", name="uq_dead_letters_row"),
    )


def downgrade() -> None:
    op.drop_table("dead_letters")
