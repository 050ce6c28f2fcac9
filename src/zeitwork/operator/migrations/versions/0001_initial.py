"""Initial schema: every table of the operator.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Conventions (kept by every later migration):
- every table has ``id uuid DEFAULT gen_random_uuid()``, ``created_at``, ``updated_at``
  (kept current by the ``zeitwork_touch_updated_at`` trigger) and ``deleted_at`` (soft delete);
- every state column has a CHECK listing exactly the values of its enum in
  ``zeitwork.core.states`` (a test compares them), written out literally here because a
  landed migration never changes;
- uniqueness of natural keys holds among live rows (``WHERE deleted_at IS NULL``);
- resources are integers: ``vcpu_millis`` (1000 = one vCPU), ``memory_mib``, ``disk_mib``;
- ``change_versions`` holds one counter per watch topic (``routes``,
  ``assignments:<node id>``), bumped in the same transaction as the change, followed by
  ``NOTIFY zeitwork_changes`` so that long-polls wake early.
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_COMMON = """
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
"""

# Order matters: referenced tables first. Downgrade drops in reverse.
_TABLES: tuple[tuple[str, str], ...] = (
    (
        "regions",
        """
        name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
        code text NOT NULL CHECK (code ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
        country text
        """,
    ),
    (
        "organisations",
        """
        name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        slug text NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$')
        """,
    ),
    (
        "projects",
        """
        organisation_id uuid REFERENCES organisations (id),
        name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        slug text NOT NULL CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
        github_repo text,
        default_branch text NOT NULL DEFAULT 'main'
        """,
    ),
    (
        "project_environments",
        """
        project_id uuid NOT NULL REFERENCES projects (id),
        name text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$')
        """,
    ),
    (
        "images",
        """
        name text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
        status text NOT NULL DEFAULT 'pending'
            CONSTRAINT images_status_check
            CHECK (status IN ('pending', 'building', 'ready', 'failed')),
        digest text CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
        size bigint CHECK (size >= 0),
        media_type text,
        config jsonb NOT NULL DEFAULT '{}'::jsonb,
        github_repo text,
        commit_sha text,
        error text
        """,
    ),
    (
        "nodes",
        """
        hostname text NOT NULL CHECK (length(hostname) BETWEEN 1 AND 253),
        ip_address text NOT NULL,
        region_id uuid REFERENCES regions (id),
        state text NOT NULL DEFAULT 'booting'
            CONSTRAINT nodes_state_check
            CHECK (state IN ('booting', 'ready', 'draining', 'down', 'terminated', 'error',
                             'unknown')),
        state_changed_at timestamptz NOT NULL DEFAULT now(),
        runtime text CHECK (runtime IN ('oci', 'firecracker')),
        vcpu_millis integer NOT NULL CHECK (vcpu_millis >= 0),
        memory_mib integer NOT NULL CHECK (memory_mib >= 0),
        disk_mib integer NOT NULL DEFAULT 0 CHECK (disk_mib >= 0),
        heartbeat jsonb,
        last_heartbeat_at timestamptz
        """,
    ),
    (
        "deployments",
        """
        project_id uuid NOT NULL REFERENCES projects (id),
        project_environment_id uuid REFERENCES project_environments (id),
        image_id uuid REFERENCES images (id),
        state text NOT NULL DEFAULT 'pending'
            CONSTRAINT deployments_state_check
            CHECK (state IN ('pending', 'deploying', 'active', 'inactive', 'failed')),
        state_changed_at timestamptz NOT NULL DEFAULT now(),
        commit_sha text,
        replicas integer NOT NULL DEFAULT 1 CHECK (replicas >= 0),
        default_port integer CHECK (default_port BETWEEN 1 AND 65535),
        vcpu_millis integer CHECK (vcpu_millis > 0),
        memory_mib integer CHECK (memory_mib > 0),
        error text
        """,
    ),
    (
        "instances",
        """
        node_id uuid REFERENCES nodes (id),
        image_id uuid NOT NULL REFERENCES images (id),
        deployment_id uuid REFERENCES deployments (id),
        state text NOT NULL DEFAULT 'pending'
            CONSTRAINT instances_state_check
            CHECK (state IN ('pending', 'starting', 'running', 'stopping', 'stopped', 'failed',
                             'terminated')),
        desired_state text NOT NULL DEFAULT 'running'
            CONSTRAINT instances_desired_state_check
            CHECK (desired_state IN ('running', 'stopped', 'terminated')),
        state_changed_at timestamptz NOT NULL DEFAULT now(),
        vcpu_millis integer NOT NULL CHECK (vcpu_millis > 0),
        memory_mib integer NOT NULL CHECK (memory_mib > 0),
        disk_mib integer NOT NULL DEFAULT 0 CHECK (disk_mib >= 0),
        default_port integer NOT NULL CHECK (default_port BETWEEN 1 AND 65535),
        environment_variables jsonb NOT NULL DEFAULT '{}'::jsonb,
        restart_policy text NOT NULL DEFAULT 'always'
            CHECK (restart_policy IN ('always', 'on-failure', 'never')),
        ip_address text,
        port integer CHECK (port BETWEEN 1 AND 65535),
        exit_code integer,
        oom_killed boolean NOT NULL DEFAULT false,
        reason text,
        log_tail jsonb NOT NULL DEFAULT '[]'::jsonb
        """,
    ),
    (
        "deployment_instances",
        """
        deployment_id uuid NOT NULL REFERENCES deployments (id),
        instance_id uuid NOT NULL REFERENCES instances (id)
        """,
    ),
    (
        "domains",
        """
        name text NOT NULL CHECK (name = lower(name) AND length(name) BETWEEN 1 AND 253),
        project_id uuid REFERENCES projects (id),
        deployment_id uuid REFERENCES deployments (id),
        verified boolean NOT NULL DEFAULT false,
        verification_token text,
        verified_at timestamptz
        """,
    ),
    (
        "environment_variables",
        """
        project_id uuid NOT NULL REFERENCES projects (id),
        project_environment_id uuid REFERENCES project_environments (id),
        name text NOT NULL CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]{0,254}$'),
        value text NOT NULL
        """,
    ),
    (
        "api_tokens",
        """
        name text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
        scope text NOT NULL
            CONSTRAINT api_tokens_scope_check
            CHECK (scope IN ('admin', 'join', 'node', 'proxy')),
        token_hash text NOT NULL CHECK (token_hash ~ '^[0-9a-f]{64}$'),
        prefix text NOT NULL DEFAULT '',
        node_id uuid REFERENCES nodes (id),
        last_used_at timestamptz,
        expires_at timestamptz,
        CONSTRAINT api_tokens_node_scope_check CHECK ((scope = 'node') = (node_id IS NOT NULL))
        """,
    ),
    (
        "certificates",
        """
        domain text NOT NULL CHECK (domain = lower(domain) AND length(domain) BETWEEN 1 AND 253),
        cert_pem text,
        key_pem text,
        not_before timestamptz,
        not_after timestamptz,
        status text NOT NULL DEFAULT 'pending'
            CONSTRAINT certificates_status_check
            CHECK (status IN ('pending', 'issued', 'failed')),
        source text NOT NULL DEFAULT 'acme'
            CONSTRAINT certificates_source_check
            CHECK (source IN ('acme', 'internal', 'static')),
        last_error text,
        attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        next_attempt_at timestamptz,
        CONSTRAINT certificates_issued_has_pem
            CHECK (status <> 'issued' OR (cert_pem IS NOT NULL AND key_pem IS NOT NULL))
        """,
    ),
    (
        "certificate_leases",
        """
        domain text NOT NULL CHECK (domain = lower(domain) AND length(domain) BETWEEN 1 AND 253),
        holder text NOT NULL CHECK (length(holder) BETWEEN 1 AND 200),
        expires_at timestamptz NOT NULL
        """,
    ),
    (
        "acme_accounts",
        """
        directory text NOT NULL CHECK (length(directory) BETWEEN 1 AND 2000),
        key_pem text NOT NULL,
        account_url text
        """,
    ),
    (
        "change_versions",
        """
        topic text NOT NULL CHECK (length(topic) BETWEEN 1 AND 200),
        version bigint NOT NULL DEFAULT 0 CHECK (version >= 0)
        """,
    ),
)

_INDEXES = """
CREATE UNIQUE INDEX regions_code_live_key ON regions (code) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX organisations_slug_live_key ON organisations (slug) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX projects_slug_live_key ON projects (slug) WHERE deleted_at IS NULL;
CREATE INDEX projects_organisation_id_idx ON projects (organisation_id);
CREATE UNIQUE INDEX project_environments_name_live_key
    ON project_environments (project_id, name) WHERE deleted_at IS NULL;
CREATE INDEX images_status_idx ON images (status);
CREATE INDEX images_digest_idx ON images (digest);
CREATE INDEX images_name_idx ON images (name);
CREATE UNIQUE INDEX nodes_hostname_live_key ON nodes (hostname) WHERE deleted_at IS NULL;
CREATE INDEX nodes_state_idx ON nodes (state);
CREATE INDEX nodes_region_id_idx ON nodes (region_id);
CREATE INDEX deployments_project_id_idx ON deployments (project_id);
CREATE INDEX deployments_project_environment_id_idx ON deployments (project_environment_id);
CREATE INDEX deployments_image_id_idx ON deployments (image_id);
CREATE INDEX deployments_state_idx ON deployments (state);
CREATE INDEX instances_state_idx ON instances (state);
CREATE INDEX instances_node_id_idx ON instances (node_id);
CREATE INDEX instances_deployment_id_idx ON instances (deployment_id);
CREATE INDEX instances_image_id_idx ON instances (image_id);
CREATE UNIQUE INDEX deployment_instances_pair_key
    ON deployment_instances (deployment_id, instance_id);
CREATE INDEX deployment_instances_instance_id_idx ON deployment_instances (instance_id);
CREATE UNIQUE INDEX domains_name_live_key ON domains (name) WHERE deleted_at IS NULL;
CREATE INDEX domains_project_id_idx ON domains (project_id);
CREATE INDEX domains_deployment_id_idx ON domains (deployment_id);
CREATE UNIQUE INDEX environment_variables_name_live_key
    ON environment_variables (project_id, project_environment_id, name)
    NULLS NOT DISTINCT WHERE deleted_at IS NULL;
CREATE INDEX environment_variables_project_environment_id_idx
    ON environment_variables (project_environment_id);
CREATE UNIQUE INDEX api_tokens_token_hash_key ON api_tokens (token_hash);
CREATE INDEX api_tokens_scope_idx ON api_tokens (scope);
CREATE INDEX api_tokens_node_id_idx ON api_tokens (node_id);
CREATE UNIQUE INDEX certificates_domain_live_key ON certificates (domain) WHERE deleted_at IS NULL;
CREATE INDEX certificates_status_idx ON certificates (status);
CREATE INDEX certificates_not_after_idx ON certificates (not_after);
CREATE UNIQUE INDEX certificate_leases_domain_key ON certificate_leases (domain);
CREATE UNIQUE INDEX acme_accounts_directory_live_key
    ON acme_accounts (directory) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX change_versions_topic_key ON change_versions (topic);
"""


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION zeitwork_touch_updated_at() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at = now();
            RETURN NEW;
        END
        $$
        """
    )
    for name, columns in _TABLES:
        op.execute(f"CREATE TABLE {name} ({_COMMON}, {columns})")
        op.execute(
            f"CREATE TRIGGER {name}_touch BEFORE UPDATE ON {name} "
            "FOR EACH ROW EXECUTE FUNCTION zeitwork_touch_updated_at()"
        )
    for statement in _INDEXES.split(";"):
        if statement.strip():
            op.execute(statement)
    op.execute("INSERT INTO change_versions (topic, version) VALUES ('routes', 0)")


def downgrade() -> None:
    for name, _columns in reversed(_TABLES):
        op.execute(f"DROP TABLE {name}")
    op.execute("DROP FUNCTION zeitwork_touch_updated_at()")
