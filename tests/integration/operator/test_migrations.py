"""The migration chain: an empty database goes to head and back to base, and head is
exactly what the code expects (tables, columns, indexes, state CHECK constraints)."""

from __future__ import annotations

import re
from enum import StrEnum

import psycopg
import pytest

from zeitwork.core.states import (
    DeploymentState,
    HealthState,
    ImageState,
    InstanceState,
    NodeState,
    ReleaseState,
    RolloutState,
)
from zeitwork.operator.db import migrate
from zeitwork.operator.principal import Scope
from zeitwork.wire.builds import BuildState

COMMON = {"id", "created_at", "updated_at", "deleted_at"}

# What the code expects at head. A migration that adds or drops a column, table or index
# updates these in the same commit (that is the point of this test).
EXPECTED_COLUMNS: dict[str, set[str]] = {
    "regions": {"name", "code", "country"},
    "organisations": {"name", "slug"},
    "projects": {
        "organisation_id",
        "name",
        "slug",
        "github_repo",
        "default_branch",
        "webhook_secret",  # 0014
        "git_token",  # 0014
        "build_concurrency",  # 0014
    },
    "project_environments": {"project_id", "name", "current_release_id", "replicas"},  # 0012
    "images": {
        "name",
        "status",
        "digest",
        "size",
        "media_type",
        "config",
        "github_repo",
        "commit_sha",
        "error",
    },
    "nodes": {
        "hostname",
        "ip_address",
        "region_id",
        "state",
        "state_changed_at",
        "runtime",
        "vcpu_millis",
        "memory_mib",
        "disk_mib",
        "heartbeat",
        "last_heartbeat_at",
        "allocated_vcpu_millis",  # 0002
        "allocated_memory_mib",  # 0002
        "subnet",  # 0005
        "state_before_down",  # 0007
        "agent_url",  # 0012
        "agent_token",  # 0012
    },
    "deployments": {
        "project_id",
        "project_environment_id",
        "image_id",
        "state",
        "state_changed_at",
        "commit_sha",
        "replicas",
        "default_port",
        "vcpu_millis",
        "memory_mib",
        "error",
    },
    "instances": {
        "node_id",
        "image_id",
        "deployment_id",
        "state",
        "desired_state",
        "state_changed_at",
        "vcpu_millis",
        "memory_mib",
        "disk_mib",
        "default_port",
        "environment_variables",
        "restart_policy",
        "ip_address",
        "port",
        "exit_code",
        "oom_killed",
        "reason",
        "log_tail",
        "lost_at",  # 0006
        "replaced_by",  # 0006
        "release_id",  # 0012
        "health",
        "health_detail",
        "healthy_since",
        "serving",
        "drain_started_at",
        "command",
        "health_check",
        "stop_timeout",
    },
    "deployment_instances": {"deployment_id", "instance_id"},
    "domains": {
        "name",
        "project_id",
        "deployment_id",
        "verified",
        "verification_token",
        "verified_at",
        "rate_limit_rps",  # 0008
        "rate_limit_burst",  # 0008
        "edge_policy",  # 0009
        "path_rate_limits",  # 0010
        "project_environment_id",  # 0012
    },
    "environment_variables": {
        "project_id",
        "project_environment_id",
        "name",
        "value",
        "secret",  # 0012
    },
    "releases": {  # 0012
        "project_id",
        "project_environment_id",
        "version",
        "image_id",
        "image_digest",
        "image_ref",
        "command",
        "port",
        "env",
        "secrets",
        "vcpu_millis",
        "memory_mib",
        "replicas",
        "health_check",
        "restart_policy",
        "strategy",
        "reason",
        "description",
        "created_by",
        "source_release_id",
        "deployment_id",
        "state",
        "backend_protocol",  # 0015
        "response_idle_timeout",  # 0017
        "tunnel_idle_timeout",  # 0017
        "max_tunnels",  # 0017
        "state_changed_at",
        "error",
    },
    "rollouts": {  # 0012
        "release_id",
        "from_release_id",
        "project_environment_id",
        "strategy",
        "state",
        "state_changed_at",
        "deadline_at",
        "finished_at",
        "error",
    },
    "events": {  # 0012
        "seq",
        "project_id",
        "project_environment_id",
        "release_id",
        "rollout_id",
        "instance_id",
        "node_id",
        "kind",
        "level",
        "message",
        "data",
    },
    "api_tokens": {
        "name",
        "scope",
        "token_hash",
        "prefix",
        "node_id",
        "last_used_at",
        "expires_at",
    },
    "certificates": {
        "domain",
        "cert_pem",
        "key_pem",
        "not_before",
        "not_after",
        "status",
        "source",
        "last_error",
        "attempts",
        "next_attempt_at",
    },
    "certificate_leases": {"domain", "holder", "expires_at"},
    "acme_accounts": {"directory", "key_pem", "account_url"},
    "internal_ca": {"cert_pem", "key_pem"},  # 0011
    "change_versions": {"topic", "version"},
    "proxy_stats": {"lb_id", "at", "started_at", "latency_bounds", "routes"},  # 0013
    "build_contexts": {"sha256", "last_used_at", "size", "path"},  # 0014
    "builds": {
        "project_id",
        "project_environment_id",
        "state",
        "reason",
        "created_by",
        "source_kind",
        "git_url",
        "git_ref",
        "git_commit",
        "git_path",
        "context_sha256",
        "dockerfile",
        "build_args",
        "stack",
        "port",
        "cache_key",
        "reused_build_id",
        "image_id",
        "release_id",
        "error",
        "failed_step",
        "lease_owner",
        "lease_token",
        "lease_expires_at",
        "attempts",
        "builder_version",
        "cancel_requested_at",
        "log_size",
        "log_truncated",
        "queued_at",
        "started_at",
        "finished_at",
        "durations",
    },
    "build_logs": {"seq", "build_id", "data"},
    "webhook_deliveries": {"delivery_id", "project_id", "received_at", "event", "build_id"},
    "registry_credentials": {"project_id", "registry", "username", "password_sealed"},  # 0016
}

# Every filter the API offers, and every natural key, has an index.
EXPECTED_INDEXES = {
    "nodes_state_idx",
    "nodes_region_id_idx",
    "nodes_hostname_live_key",
    "instances_state_idx",
    "instances_node_id_idx",
    "instances_deployment_id_idx",
    "instances_image_id_idx",
    "images_status_idx",
    "images_digest_idx",
    "deployments_project_id_idx",
    "deployments_state_idx",
    "domains_name_live_key",
    "domains_project_id_idx",
    "domains_deployment_id_idx",
    "api_tokens_token_hash_key",
    "api_tokens_node_id_idx",
    "certificates_domain_live_key",
    "certificate_leases_domain_key",
    "acme_accounts_directory_live_key",
    "internal_ca_live_key",  # 0011: one live CA
    "change_versions_topic_key",
    "regions_code_live_key",
    "projects_slug_live_key",
    "project_environments_name_live_key",
    "releases_version_live_key",  # 0012
    "releases_project_id_idx",
    "releases_state_idx",
    "rollouts_one_running_key",
    "rollouts_release_id_idx",
    "instances_release_id_idx",
    "domains_project_environment_id_idx",
    "events_seq_key",
    "events_project_id_seq_idx",
    "events_created_at_idx",
    "proxy_stats_lb_id_at_key",  # 0013
    "proxy_stats_created_at_idx",
    "build_contexts_sha256_key",  # 0014
    "builds_project_id_created_at_idx",
    "builds_open_idx",
    "builds_cache_key_idx",
    "builds_context_sha256_idx",
    "build_logs_seq_key",
    "build_logs_build_id_seq_idx",
    "webhook_deliveries_delivery_id_key",
    "webhook_deliveries_received_at_idx",
    "registry_credentials_project_registry_key",  # 0016
}

STATE_CHECKS: dict[str, list[str]] = {
    "nodes_state_check": [s.value for s in NodeState],
    "instances_state_check": [s.value for s in InstanceState],
    "instances_desired_state_check": ["running", "stopped", "terminated"],
    "images_status_check": [s.value for s in ImageState],
    "deployments_state_check": [s.value for s in DeploymentState],
    "api_tokens_scope_check": [s.value for s in Scope],
    "certificates_status_check": ["pending", "issued", "failed"],
    "certificates_source_check": ["acme", "internal", "static"],
    "releases_state_check": [s.value for s in ReleaseState],  # 0012
    "rollouts_state_check": [s.value for s in RolloutState],
    "rollouts_strategy_check": ["rolling", "bluegreen", "immediate"],
    "releases_reason_check": ["deploy", "rollback", "config", "migration"],
    "instances_health_check": [s.value for s in HealthState],
    "events_level_check": ["info", "warning", "error"],
    "builds_state_check": [s.value for s in BuildState],  # 0014
    "builds_source_kind_check": ["dir", "git"],
}


def _public_tables(conn: psycopg.Connection[tuple[object, ...]]) -> set[str]:
    rows = conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    ).fetchall()
    return {str(r[0]) for r in rows} - {"alembic_version"}


def test_up_to_head_and_down_to_base(fresh_database: str) -> None:
    assert migrate.current_revision(fresh_database) is None
    migrate.upgrade(fresh_database)
    assert migrate.current_revision(fresh_database) == migrate.head_revision()
    with psycopg.connect(fresh_database) as conn:
        assert _public_tables(conn) == set(EXPECTED_COLUMNS)
    migrate.downgrade(fresh_database, "base")
    assert migrate.current_revision(fresh_database) is None
    with psycopg.connect(fresh_database) as conn:
        assert _public_tables(conn) == set()
        functions = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE proname = 'zeitwork_touch_updated_at'"
        ).fetchone()
        assert functions == (0,)
    # and up again: downgrade left nothing behind that blocks a new upgrade
    migrate.upgrade(fresh_database)
    assert migrate.current_revision(fresh_database) == migrate.head_revision()


def test_one_head_only() -> None:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(migrate.alembic_config()).get_heads()
    assert len(heads) == 1, heads


def test_head_has_expected_columns(migrated_database: str) -> None:
    with psycopg.connect(migrated_database) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public'"
        ).fetchall()
    actual: dict[str, set[str]] = {}
    for table, column in rows:
        actual.setdefault(str(table), set()).add(str(column))
    actual.pop("alembic_version", None)
    expected = {t: cols | COMMON for t, cols in EXPECTED_COLUMNS.items()}
    assert actual == expected


def test_every_table_has_id_default_and_timestamps(migrated_database: str) -> None:
    with psycopg.connect(migrated_database) as conn:
        rows = conn.execute(
            "SELECT table_name, column_default, is_nullable FROM information_schema.columns "
            "WHERE table_schema = 'public' AND column_name = 'id'"
        ).fetchall()
        triggers = {
            str(r[0])
            for r in conn.execute(
                "SELECT event_object_table FROM information_schema.triggers "
                "WHERE trigger_name LIKE '%\\_touch'"
            ).fetchall()
        }
    defaults = {str(t): str(d) for t, d, _ in rows if t != "alembic_version"}
    assert set(defaults) == set(EXPECTED_COLUMNS)
    assert all(d == "gen_random_uuid()" for d in defaults.values()), defaults
    assert triggers == set(EXPECTED_COLUMNS)


def test_expected_indexes_exist(migrated_database: str) -> None:
    with psycopg.connect(migrated_database) as conn:
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
        names = {str(r[0]) for r in rows.fetchall()}
    assert names >= EXPECTED_INDEXES, EXPECTED_INDEXES - names


def _check_values(definition: str) -> list[str]:
    # pg_get_constraintdef renders IN (...) as = ANY (ARRAY['a'::text, ...])
    return re.findall(r"'([^']*)'::text", definition)


@pytest.mark.parametrize("constraint", sorted(STATE_CHECKS))
def test_state_checks_match_enums(migrated_database: str, constraint: str) -> None:
    with psycopg.connect(migrated_database) as conn:
        row = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = %s",
            (constraint,),
        ).fetchone()
    assert row is not None, f"missing constraint {constraint}"
    assert sorted(_check_values(str(row[0]))) == sorted(STATE_CHECKS[constraint])


@pytest.mark.parametrize(
    ("enum", "table"),
    [(NodeState, "nodes"), (InstanceState, "instances"), (ImageState, "images")],
)
def test_state_check_rejects_unknown_value(
    migrated_database: str, enum: type[StrEnum], table: str
) -> None:
    # the check is live: a value outside the enum is refused by the database itself
    values = {
        "nodes": "(hostname, ip_address, vcpu_millis, memory_mib, state) "
        "VALUES ('h', '10.0.0.1', 1000, 512, %s)",
        "images": "(name, status) VALUES ('img', %s)",
    }
    with psycopg.connect(migrated_database) as conn:
        if table == "instances":
            image = conn.execute("INSERT INTO images (name) VALUES ('i') RETURNING id").fetchone()
            assert image is not None
            for value in enum:
                conn.execute(
                    "INSERT INTO instances (image_id, vcpu_millis, memory_mib, default_port, state)"
                    " VALUES (%s, 100, 64, 80, %s)",
                    (image[0], value.value),
                )
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(
                    "INSERT INTO instances (image_id, vcpu_millis, memory_mib, default_port, state)"
                    " VALUES (%s, 100, 64, 80, 'bogus')",
                    (image[0],),
                )
            return
        sql = f"INSERT INTO {table} {values[table]}"
        with conn.transaction():
            conn.execute(sql, (next(iter(enum)).value,))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(sql, ("bogus",))
