"""Step claims on job rows and the ``workers`` table, for job steps on Celery workers.

``jobs.step_owner`` / ``step_lease_until``: who runs the job's current step and until when
that claim holds unless renewed (``storage/step_claims.py``); ``jobs.dispatch_due_at``:
when the node publishes the step's message again if nobody has claimed it. ``workers``:
one row per ``segnode worker`` with its heartbeat (the dashboard's and metrics' view of
the workers). The embedded executor leaves all of them empty. ``associations.listener``:
which listener process (``host:pid``) took an association, now that several may share a
port (``listener.processes``) or a database.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("step_owner", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("step_lease_until", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("dispatch_due_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("associations") as batch:
        batch.add_column(sa.Column("listener", sa.String(length=200), nullable=True))
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("hostname", sa.String(length=200), nullable=False),
        sa.Column("queues", sa.String(length=200), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime(), nullable=True),
        sa.Column("steps_done", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("steps_failed", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("workers")
    with op.batch_alter_table("associations") as batch:
        batch.drop_column("listener")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("dispatch_due_at")
        batch.drop_column("step_lease_until")
        batch.drop_column("step_owner")
