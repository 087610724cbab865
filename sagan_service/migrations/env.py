"""Alembic environment: runs on the connection that sagan_service.migrate hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy import text

from sagan_service.models import Base

connection = context.config.attributes["connection"]
is_postgres = connection.dialect.name == "postgresql"
if is_postgres:
    # API replicas start together; the lock serialises their upgrades (released with the transaction).
    connection.execute(text("SELECT pg_advisory_xact_lock(774061)"))
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things in place; batch mode copies the table instead.
    render_as_batch=not is_postgres,
)
with context.begin_transaction():
    context.run_migrations()
