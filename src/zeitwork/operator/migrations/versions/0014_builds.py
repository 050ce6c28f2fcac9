"""Builds from source: the build queue, build logs, uploaded contexts, webhook deliveries.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

- ``api_tokens.scope`` may be ``builder`` (a builder leases, runs and finishes build jobs).
- ``build_contexts``: an uploaded build context (a tarball), addressed by its sha256, so an
  unchanged context is not uploaded twice; ``path`` is where the operator stored it.
- ``builds``: one build job of a project's environment: ``queued → running → succeeded |
  failed | cancelled``. Its source is an uploaded context (``source_kind = 'dir'``,
  ``context_sha256``) or a git repository (``git_url``, ``git_ref``, the resolved
  ``git_commit``, ``git_path`` a subdirectory). A builder takes a queued job with ``FOR UPDATE
  SKIP LOCKED`` and holds it under a lease (``lease_owner``, ``lease_token``,
  ``lease_expires_at``) it renews; finishing compares the lease token, so a job whose lease
  expired and was taken again is finished exactly once. ``cache_key`` (sha256 of the commit or
  context and the build settings) finds an earlier successful build whose image is reused.
  ``cancel_requested_at`` asks the builder running it to stop. On success ``image_id`` and the
  ``release_id`` made of it; on failure ``error`` and ``failed_step``.
- ``build_logs``: the build's output in chunks, ordered by ``seq`` (the follow cursor); the
  operator keeps at most about 1 MiB per build (the oldest chunks go; ``builds.log_truncated``).
- ``projects.webhook_secret``: the GitHub webhook secret as a ciphertext
  (``ZEITWORK_SECRETS_KEY``, like secret environment variables); ``projects.git_token`` the
  token for a private repository, a ciphertext too; ``projects.build_concurrency`` how many of
  the project's builds run at once (default 1).
- ``webhook_deliveries``: the ``X-GitHub-Delivery`` ids seen, so a redelivery is not built
  twice (a unique ``delivery_id``).

Every table has the usual ``id``/timestamps; the natural keys (``build_contexts.sha256``,
``build_logs.seq``, ``webhook_deliveries.delivery_id``) are unique indexes.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_UPGRADE = """
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_scope_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_scope_check
    CHECK (scope IN ('admin', 'join', 'node', 'proxy', 'builder'));

CREATE TABLE build_contexts (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    sha256 text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    last_used_at timestamptz NOT NULL DEFAULT now(),
    size bigint NOT NULL CHECK (size >= 0),
    path text NOT NULL CHECK (length(path) BETWEEN 1 AND 4000)
);
CREATE TRIGGER build_contexts_touch BEFORE UPDATE ON build_contexts
    FOR EACH ROW EXECUTE FUNCTION zeitwork_touch_updated_at();
CREATE UNIQUE INDEX build_contexts_sha256_key ON build_contexts (sha256);

ALTER TABLE projects
    ADD COLUMN webhook_secret text CHECK (length(webhook_secret) <= 4000),
    ADD COLUMN git_token text CHECK (length(git_token) <= 8000),
    ADD COLUMN build_concurrency integer NOT NULL DEFAULT 1
        CHECK (build_concurrency BETWEEN 1 AND 100);

CREATE TABLE builds (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    project_id uuid NOT NULL REFERENCES projects (id),
    project_environment_id uuid NOT NULL REFERENCES project_environments (id),
    state text NOT NULL DEFAULT 'queued'
        CONSTRAINT builds_state_check
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    reason text NOT NULL DEFAULT 'deploy' CHECK (reason ~ '^[a-z][a-z0-9_.-]{0,39}$'),
    created_by text CHECK (length(created_by) <= 200),
    source_kind text NOT NULL
        CONSTRAINT builds_source_kind_check CHECK (source_kind IN ('dir', 'git')),
    git_url text CHECK (length(git_url) <= 2000),
    git_ref text CHECK (length(git_ref) <= 255),
    git_commit text CHECK (git_commit ~ '^[0-9a-f]{40}([0-9a-f]{24})?$'),
    git_path text CHECK (length(git_path) <= 1000),
    context_sha256 text CHECK (context_sha256 ~ '^[0-9a-f]{64}$'),
    dockerfile text CHECK (length(dockerfile) <= 1000),
    build_args jsonb NOT NULL DEFAULT '{}'::jsonb,
    stack text CHECK (length(stack) <= 100),
    port integer CHECK (port BETWEEN 1 AND 65535),
    cache_key text CHECK (cache_key ~ '^[0-9a-f]{64}$'),
    reused_build_id uuid REFERENCES builds (id),
    image_id uuid REFERENCES images (id),
    release_id uuid REFERENCES releases (id),
    error text CHECK (length(error) <= 8000),
    failed_step text CHECK (length(failed_step) <= 2000),
    lease_owner text CHECK (length(lease_owner) <= 200),
    lease_token uuid,
    lease_expires_at timestamptz,
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    builder_version text CHECK (length(builder_version) <= 100),
    cancel_requested_at timestamptz,
    log_size bigint NOT NULL DEFAULT 0 CHECK (log_size >= 0),
    log_truncated boolean NOT NULL DEFAULT false,
    queued_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    durations jsonb NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT builds_source_check CHECK (
        (source_kind = 'dir' AND context_sha256 IS NOT NULL)
        OR (source_kind = 'git' AND git_url IS NOT NULL)),
    CONSTRAINT builds_lease_check CHECK (
        state <> 'running' OR (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL))
);
CREATE TRIGGER builds_touch BEFORE UPDATE ON builds
    FOR EACH ROW EXECUTE FUNCTION zeitwork_touch_updated_at();
CREATE INDEX builds_project_id_created_at_idx ON builds (project_id, created_at);
CREATE INDEX builds_open_idx ON builds (state, queued_at)
    WHERE state IN ('queued', 'running') AND deleted_at IS NULL;
CREATE INDEX builds_cache_key_idx ON builds (cache_key) WHERE state = 'succeeded';
CREATE INDEX builds_context_sha256_idx ON builds (context_sha256);

CREATE TABLE build_logs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    seq bigserial NOT NULL,
    build_id uuid NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
    data text NOT NULL CHECK (length(data) <= 262144)
);
CREATE TRIGGER build_logs_touch BEFORE UPDATE ON build_logs
    FOR EACH ROW EXECUTE FUNCTION zeitwork_touch_updated_at();
CREATE UNIQUE INDEX build_logs_seq_key ON build_logs (seq);
CREATE INDEX build_logs_build_id_seq_idx ON build_logs (build_id, seq);

CREATE TABLE webhook_deliveries (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    delivery_id text NOT NULL CHECK (length(delivery_id) BETWEEN 1 AND 200),
    project_id uuid REFERENCES projects (id),
    received_at timestamptz NOT NULL DEFAULT now(),
    event text CHECK (length(event) <= 100),
    build_id uuid REFERENCES builds (id)
);
CREATE TRIGGER webhook_deliveries_touch BEFORE UPDATE ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION zeitwork_touch_updated_at();
CREATE UNIQUE INDEX webhook_deliveries_delivery_id_key ON webhook_deliveries (delivery_id);
CREATE INDEX webhook_deliveries_received_at_idx ON webhook_deliveries (received_at)
"""

_DOWNGRADE = """
DROP TABLE webhook_deliveries;
DROP TABLE build_logs;
DROP TABLE builds;
ALTER TABLE projects DROP COLUMN webhook_secret, DROP COLUMN git_token,
    DROP COLUMN build_concurrency;
DROP TABLE build_contexts;
DELETE FROM api_tokens WHERE scope = 'builder';
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_scope_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_scope_check
    CHECK (scope IN ('admin', 'join', 'node', 'proxy'))
"""


def _run(script: str) -> None:
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _run(_UPGRADE)


def downgrade() -> None:
    _run(_DOWNGRADE)
