"""Alembic environment: runs migrations on the engine handed over by segnode.storage.database."""

from __future__ import annotations

from alembic import context

from segnode.storage.models import Base

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    raise RuntimeError("run migrations through segnode.storage.database.upgrade_to_head")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
