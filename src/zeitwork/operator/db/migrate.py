"""Alembic glue: upgrade, downgrade, new revisions, and "is the schema current?".

This module opens the (synchronous) migration connection itself, psycopg through
SQLAlchemy, and hands it to ``migrations/env.py`` through ``config.attributes``. Upgrades
take a PostgreSQL advisory lock so that several operators starting at once migrate once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.pool import NullPool

from zeitwork.core.errors import ServiceUnavailable, ZeitworkError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_LOCK_KEY = 0x7A657477  # "zetw": serialises concurrent upgrades


class SchemaError(ZeitworkError):
    """The database's schema cannot be brought to the requested revision."""

    title = "Schema error"
    code = "schema"


@contextmanager
def _alembic_errors() -> Iterator[None]:
    try:
        yield
    except CommandError as exc:  # e.g. the database is at a revision this code does not know
        raise SchemaError(f"migration failed: {exc}") from exc


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("the migration chain is empty")
    return str(head)


def known_revision(revision: str) -> bool:
    """Whether ``revision`` belongs to this code's migration chain."""
    script = ScriptDirectory.from_config(alembic_config())
    return any(r.revision == revision for r in script.walk_revisions())


@contextmanager
def _engine(url: str) -> Iterator[sqlalchemy.Engine]:
    def creator() -> psycopg.Connection[tuple[object, ...]]:
        try:
            return psycopg.connect(url, connect_timeout=10)
        except psycopg.OperationalError as exc:
            raise ServiceUnavailable(f"cannot connect to the database: {exc}".strip()) from exc

    engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=creator, poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The revision the database is at (None for an empty database)."""
    with _engine(url) as engine, engine.connect() as conn:
        rev = MigrationContext.configure(conn).get_current_revision()
        return None if rev is None else str(rev)


def upgrade(url: str, target: str = "head") -> None:
    with _engine(url) as engine, engine.begin() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        with _alembic_errors():
            command.upgrade(cfg, target)


def downgrade(url: str, target: str) -> None:
    with _engine(url) as engine, engine.begin() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        with _alembic_errors():
            command.downgrade(cfg, target)


def new_revision(message: str) -> Path:
    """Write a new empty revision on top of head, numbered after the last one."""
    cfg = alembic_config()
    script = ScriptDirectory.from_config(cfg)
    numbers = [int(r.revision) for r in script.walk_revisions() if re.fullmatch(r"\d+", r.revision)]
    rev_id = f"{max(numbers, default=0) + 1:04d}"
    result = command.revision(cfg, message=message, rev_id=rev_id)
    scripts = result if isinstance(result, list) else [result]
    first = scripts[0]
    if first is None:
        raise RuntimeError("alembic did not write a revision")
    return Path(first.path)
