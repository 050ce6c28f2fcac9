"""Alembic environment: runs migrations on the connection handed in by the caller.

``zeitwork.operator.db.migrate`` opens the connection (psycopg through SQLAlchemy) and puts
it into ``config.attributes["connection"]``; this file only drives Alembic's context.
"""

from __future__ import annotations

from alembic import context


def _run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `zeitwork migrate`, not the alembic CLI")
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) mode is not supported; use `zeitwork migrate`")
_run()
