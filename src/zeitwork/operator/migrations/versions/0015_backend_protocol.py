"""How the proxies speak to a release's instances.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

- ``releases.backend_protocol``: ``http1`` (HTTP/1.1 keep-alive, the default and what every
  release before this one used) or ``h2c`` (HTTP/2 cleartext with prior knowledge: gRPC and
  other HTTP/2-only servers). The route table gives each backend its release's value
  (``Backend.protocol``); load balancers open h2c connections to those (``docs/http2.md``).
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

_UPGRADE = """
ALTER TABLE releases ADD COLUMN backend_protocol text NOT NULL DEFAULT 'http1'
    CONSTRAINT releases_backend_protocol CHECK (backend_protocol IN ('http1', 'h2c'))
"""

_DOWNGRADE = "ALTER TABLE releases DROP COLUMN backend_protocol"


def upgrade() -> None:
    op.execute(_UPGRADE)


def downgrade() -> None:
    op.execute(_DOWNGRADE)
