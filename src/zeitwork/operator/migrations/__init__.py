"""Alembic migration chain of the operator's PostgreSQL schema (SQL via ``op.execute``).

One chain, one head. Landed migrations are immutable: change the schema by adding a new
revision on top (``make migration m="what it changes"``). ``env.py`` gets its connection
from ``zeitwork.operator.db.migrate`` (the only place that opens it).
"""
