"""Routing rules and destinations switched off at run time (``suspensions``).

A row names a rule or a destination an operator suspended (who, when, why); the completion
monitor skips a suspended rule, the sending step holds deliveries to a suspended
destination until it is resumed (the row deleted).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "suspensions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("by", sa.String(length=160), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "name", name="uq_suspensions_kind_name"),
    )


def downgrade() -> None:
    op.drop_table("suspensions")
