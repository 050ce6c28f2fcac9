"""The platform's internal CA, shared by every edge in internal TLS mode.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27

One live row at most (a unique index on a constant): the first CA an edge offers is kept and handed to every
other edge, so certificates issued by any of them chain to the one CA that clients trust.
The key is stored in clear, like the certificates' keys: protect the database accordingly.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE internal_ca ("
        " id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
        " created_at timestamptz NOT NULL DEFAULT now(),"
        " updated_at timestamptz NOT NULL DEFAULT now(),"
        " deleted_at timestamptz,"
        " cert_pem text NOT NULL,"
        " key_pem text NOT NULL)"
    )
    op.execute(
        "CREATE TRIGGER internal_ca_touch BEFORE UPDATE ON internal_ca "
        "FOR EACH ROW EXECUTE FUNCTION zeitwork_touch_updated_at()"
    )
    # one live CA: a unique index on a constant
    op.execute(
        "CREATE UNIQUE INDEX internal_ca_live_key ON internal_ca ((true)) WHERE deleted_at IS NULL"
    )


def downgrade() -> None:
    op.execute("DROP TABLE internal_ca")
