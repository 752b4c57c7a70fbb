"""The job's quality verdict: "review recommended" and the flags raised.

``jobs.review_recommended`` is NULL until the write step ran its quality checks, then true
or false; ``jobs.quality_flags`` holds the flags (check, role, summary) as JSON, so
``segnode jobs list`` and a dashboard can show which results need a second look without
opening the job folder.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("review_recommended", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("quality_flags", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("quality_flags")
        batch_op.drop_column("review_recommended")
