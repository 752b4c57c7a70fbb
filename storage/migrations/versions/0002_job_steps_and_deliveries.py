"""Job step bookkeeping (retries with backoff, model provenance) and per-destination deliveries.

``jobs.step_attempt`` and ``jobs.next_attempt_at`` let a transient step failure wait and
retry without a thread holding the job; ``job_deliveries`` tracks each destination of a
job's results separately, so a PACS that is down delays only its own copy and a delivered
destination is never sent the same result again.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("step_attempt", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("model_id", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("model_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("finished_at", sa.DateTime(), nullable=True))
    op.create_table(
        "job_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.Column("sop_instance_uids", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "destination", name="uq_job_deliveries_job_destination"),
    )
    with op.batch_alter_table("job_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_deliveries_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("job_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_deliveries_job_id"))
    op.drop_table("job_deliveries")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for column in (
            "finished_at",
            "model_sha256",
            "model_id",
            "next_attempt_at",
            "step_attempt",
        ):
            batch_op.drop_column(column)
