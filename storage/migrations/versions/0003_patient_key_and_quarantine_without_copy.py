"""Patient identity on studies; quarantine rows whose copy could not be written.

``studies.patient_key`` is a hash of the patient's identity (never shown): an instance
whose study or series UID is already recorded under another patient is quarantined
instead of merged. ``quarantine.file_path`` becomes nullable: when the disk is full
the bytes cannot be kept, but the refusal and its reason still are.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_key", sa.String(length=64), nullable=True))
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.alter_column("file_path", existing_type=sa.String(length=512), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.alter_column("file_path", existing_type=sa.String(length=512), nullable=False)
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("patient_key")
