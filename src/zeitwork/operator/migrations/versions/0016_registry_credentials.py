"""Per-project registry credentials: how the operator pulls an app's private images.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

- ``registry_credentials``: one user name and password per (project, registry host), the
  password sealed with the operator's secrets key (``ZEITWORK_SECRETS_KEY``, Fernet) as app
  secrets are; used when a release of that project names an image in that registry.
  Removing a credential deletes its row (nothing to keep of a secret).
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_UPGRADE = """
CREATE TABLE registry_credentials (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    project_id uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    registry text NOT NULL CHECK (length(registry) BETWEEN 1 AND 260),
    username text NOT NULL CHECK (length(username) BETWEEN 1 AND 255),
    password_sealed text NOT NULL
);
CREATE TRIGGER registry_credentials_touch BEFORE UPDATE ON registry_credentials
    FOR EACH ROW EXECUTE FUNCTION zeitwork_touch_updated_at();
CREATE UNIQUE INDEX registry_credentials_project_registry_key
    ON registry_credentials (project_id, registry);
"""

_DOWNGRADE = "DROP TABLE registry_credentials"


def upgrade() -> None:
    op.execute(_UPGRADE)


def downgrade() -> None:
    op.execute(_DOWNGRADE)
