"""Releases, rollouts, health, events and the agents' API address.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

- ``releases``: the immutable, numbered (v1, v2, ... per environment) versions of an app's
  environment: image by digest, command, port, environment and secrets, resources, replica
  count, health check, restart policy, rollout strategy, why and by whom. Exactly one per
  environment is current (``project_environments.current_release_id``).
- ``rollouts``: one per release that is rolled out; at most one ``running`` per environment.
  The plan's progress is in the instances' rows (``release_id``, ``serving``,
  ``drain_started_at``), so a restarted operator resumes where the last one stopped.
- ``instances``: ``release_id``, the agent-reported ``health`` with its last result, when it
  became healthy, whether it is in the route (``serving``) and since when it drains; the
  release's command, health check and stop timeout travel with it to the agent.
- ``domains.project_environment_id``: a domain binds to an environment, so its route follows
  the current release (``deployment_id`` stays for rows not carried over).
- ``events``: what the platform did and saw, ordered by ``seq`` (the follow cursor).
- ``nodes.agent_url``, ``nodes.agent_token``: where and with which credential (one the agent
  made and sent at registration) the operator calls the node agent's API (logs fan-in).
- ``environment_variables.secret``: the value is a ciphertext (``ZEITWORK_SECRETS_KEY``).

Data carried over: every project gets a ``production`` environment when it has none; every
live deployment becomes a release of its environment (numbered by creation time), the newest
``deploying``/``active`` one per environment current (``active``), older ones ``superseded``,
failed ones ``failed``; their instances join the release, running ones serving and healthy
(they served before); bound domains bind to the release's environment.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_COMMON = """
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
"""

_UPGRADE = f"""
ALTER TABLE project_environments
    ADD COLUMN current_release_id uuid,
    ADD COLUMN replicas integer NOT NULL DEFAULT 1 CHECK (replicas BETWEEN 0 AND 1000);

CREATE TABLE releases ({_COMMON},
    project_id uuid NOT NULL REFERENCES projects (id),
    project_environment_id uuid NOT NULL REFERENCES project_environments (id),
    version integer NOT NULL CHECK (version >= 1),
    image_id uuid NOT NULL REFERENCES images (id),
    image_digest text CHECK (image_digest ~ '^sha256:[0-9a-f]{{64}}$'),
    image_ref text CHECK (length(image_ref) <= 1000),
    command jsonb,
    port integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    env jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    secrets jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    vcpu_millis integer NOT NULL CHECK (vcpu_millis > 0),
    memory_mib integer NOT NULL CHECK (memory_mib > 0),
    replicas integer NOT NULL CHECK (replicas BETWEEN 0 AND 1000),
    health_check jsonb NOT NULL DEFAULT '{{"type": "tcp"}}'::jsonb,
    restart_policy text NOT NULL DEFAULT 'always'
        CHECK (restart_policy IN ('always', 'on-failure', 'never')),
    strategy jsonb NOT NULL DEFAULT '{{"type": "rolling"}}'::jsonb,
    reason text NOT NULL DEFAULT 'deploy'
        CONSTRAINT releases_reason_check
        CHECK (reason IN ('deploy', 'rollback', 'config', 'migration')),
    description text CHECK (length(description) <= 2000),
    created_by text CHECK (length(created_by) <= 200),
    source_release_id uuid REFERENCES releases (id),
    deployment_id uuid REFERENCES deployments (id),
    state text NOT NULL DEFAULT 'pending'
        CONSTRAINT releases_state_check
        CHECK (state IN ('pending', 'deploying', 'active', 'superseded', 'failed')),
    state_changed_at timestamptz NOT NULL DEFAULT now(),
    error text
);
CREATE TRIGGER releases_touch BEFORE UPDATE ON releases
    FOR EACH ROW EXECUTE FUNCTION zeitwork_touch_updated_at();
CREATE UNIQUE INDEX releases_version_live_key
    ON releases (project_environment_id, version) WHERE deleted_at IS NULL;
CREATE INDEX releases_project_id_idx ON releases (project_id);
CREATE INDEX releases_state_idx ON releases (state);

ALTER TABLE project_environments
    ADD CONSTRAINT project_environments_current_release_fkey
    FOREIGN KEY (current_release_id) REFERENCES releases (id);

CREATE TABLE rollouts ({_COMMON},
    release_id uuid NOT NULL REFERENCES releases (id),
    from_release_id uuid REFERENCES releases (id),
    project_environment_id uuid NOT NULL REFERENCES project_environments (id),
    strategy text NOT NULL
        CONSTRAINT rollouts_strategy_check
        CHECK (strategy IN ('rolling', 'bluegreen', 'immediate')),
    state text NOT NULL DEFAULT 'running'
        CONSTRAINT rollouts_state_check
        CHECK (state IN ('running', 'succeeded', 'failed', 'superseded')),
    state_changed_at timestamptz NOT NULL DEFAULT now(),
    deadline_at timestamptz NOT NULL,
    finished_at timestamptz,
    error text
);
CREATE TRIGGER rollouts_touch BEFORE UPDATE ON rollouts
    FOR EACH ROW EXECUTE FUNCTION zeitwork_touch_updated_at();
CREATE UNIQUE INDEX rollouts_one_running_key
    ON rollouts (project_environment_id) WHERE state = 'running' AND deleted_at IS NULL;
CREATE INDEX rollouts_release_id_idx ON rollouts (release_id);

ALTER TABLE instances
    ADD COLUMN release_id uuid REFERENCES releases (id),
    ADD COLUMN health text NOT NULL DEFAULT 'unknown'
        CONSTRAINT instances_health_check
        CHECK (health IN ('unknown', 'healthy', 'unhealthy')),
    ADD COLUMN health_detail jsonb,
    ADD COLUMN healthy_since timestamptz,
    ADD COLUMN serving boolean NOT NULL DEFAULT false,
    ADD COLUMN drain_started_at timestamptz,
    ADD COLUMN command jsonb,
    ADD COLUMN health_check jsonb,
    ADD COLUMN stop_timeout double precision NOT NULL DEFAULT 10
        CHECK (stop_timeout >= 0 AND stop_timeout <= 3600);
CREATE INDEX instances_release_id_idx ON instances (release_id);

ALTER TABLE domains ADD COLUMN project_environment_id uuid REFERENCES project_environments (id);
CREATE INDEX domains_project_environment_id_idx ON domains (project_environment_id);

ALTER TABLE nodes ADD COLUMN agent_url text CHECK (length(agent_url) <= 2000),
    ADD COLUMN agent_token text CHECK (length(agent_token) <= 200);

ALTER TABLE environment_variables ADD COLUMN secret boolean NOT NULL DEFAULT false;

CREATE TABLE events ({_COMMON},
    seq bigserial NOT NULL,
    project_id uuid,
    project_environment_id uuid,
    release_id uuid,
    rollout_id uuid,
    instance_id uuid,
    node_id uuid,
    kind text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_.]{{0,99}}$'),
    level text NOT NULL DEFAULT 'info'
        CONSTRAINT events_level_check CHECK (level IN ('info', 'warning', 'error')),
    message text NOT NULL CHECK (length(message) <= 4000),
    data jsonb NOT NULL DEFAULT '{{}}'::jsonb
);
CREATE TRIGGER events_touch BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION zeitwork_touch_updated_at();
CREATE UNIQUE INDEX events_seq_key ON events (seq);
CREATE INDEX events_project_id_seq_idx ON events (project_id, seq);
CREATE INDEX events_created_at_idx ON events (created_at);

-- carry today's data over ---------------------------------------------------------------

INSERT INTO project_environments (project_id, name)
SELECT p.id, 'production' FROM projects p
WHERE p.deleted_at IS NULL AND NOT EXISTS (
    SELECT 1 FROM project_environments e
    WHERE e.project_id = p.id AND e.name = 'production' AND e.deleted_at IS NULL);

UPDATE deployments d SET project_environment_id = e.id
FROM project_environments e
WHERE d.project_environment_id IS NULL AND e.project_id = d.project_id
  AND e.name = 'production' AND e.deleted_at IS NULL;

INSERT INTO releases (project_id, project_environment_id, version, image_id, image_digest,
                      port, vcpu_millis, memory_mib, replicas, reason, deployment_id, state,
                      error, created_at, state_changed_at)
SELECT d.project_id, d.project_environment_id,
       row_number() OVER (PARTITION BY d.project_environment_id ORDER BY d.created_at, d.id),
       d.image_id, i.digest, coalesce(d.default_port, 8080), coalesce(d.vcpu_millis, 1000),
       coalesce(d.memory_mib, 256), d.replicas, 'migration', d.id,
       CASE WHEN d.state = 'failed' THEN 'failed' ELSE 'superseded' END,
       d.error, d.created_at, d.state_changed_at
FROM deployments d JOIN images i ON i.id = d.image_id
WHERE d.deleted_at IS NULL AND d.project_environment_id IS NOT NULL;

WITH newest AS (
    SELECT DISTINCT ON (r.project_environment_id) r.id, r.project_environment_id, r.replicas
    FROM releases r JOIN deployments d ON d.id = r.deployment_id
    WHERE d.state IN ('deploying', 'active', 'pending')
    ORDER BY r.project_environment_id, r.version DESC
)
UPDATE project_environments e SET current_release_id = n.id, replicas = n.replicas
FROM newest n WHERE e.id = n.project_environment_id;

UPDATE releases r SET state = 'active'
FROM project_environments e WHERE e.current_release_id = r.id;

UPDATE instances i SET release_id = r.id,
       serving = (i.state = 'running'),
       health = CASE WHEN i.state = 'running' THEN 'healthy' ELSE 'unknown' END,
       healthy_since = CASE WHEN i.state = 'running' THEN now() END
FROM releases r WHERE r.deployment_id = i.deployment_id;

UPDATE domains dm SET project_environment_id = r.project_environment_id
FROM releases r WHERE r.deployment_id = dm.deployment_id;
"""

_DOWNGRADE = """
DROP TABLE events;
ALTER TABLE environment_variables DROP COLUMN secret;
ALTER TABLE nodes DROP COLUMN agent_url, DROP COLUMN agent_token;
ALTER TABLE domains DROP COLUMN project_environment_id;
ALTER TABLE instances DROP COLUMN release_id, DROP COLUMN health, DROP COLUMN health_detail,
    DROP COLUMN healthy_since, DROP COLUMN serving, DROP COLUMN drain_started_at,
    DROP COLUMN command, DROP COLUMN health_check, DROP COLUMN stop_timeout;
DROP TABLE rollouts;
ALTER TABLE project_environments DROP CONSTRAINT project_environments_current_release_fkey;
DROP TABLE releases;
ALTER TABLE project_environments DROP COLUMN current_release_id, DROP COLUMN replicas;
"""


def _run(script: str) -> None:
    for statement in script.split(";\n"):
        lines = [line for line in statement.splitlines() if not line.lstrip().startswith("--")]
        if "\n".join(lines).strip():
            op.execute("\n".join(lines))


def upgrade() -> None:
    _run(_UPGRADE)


def downgrade() -> None:
    _run(_DOWNGRADE)
