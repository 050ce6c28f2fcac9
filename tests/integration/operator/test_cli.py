"""The ``zeitwork`` commands of the operator, run as real processes: migrate, token
create, the operator on DATABASE_URL (refusing an old schema, draining on SIGTERM), and
the operator on its embedded PostgreSQL (data kept across restarts)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from zeitwork.operator.db import migrate

ADMIN = "zw_cli-test-admin-token-0123456789abcdefghij"


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "PORT", "ZEITWORK_ADMIN_TOKEN", "ENVIRONMENT")
    }
    env.update(extra)
    return env


def zeitwork(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zeitwork", *args],
        env=_env(**env),
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrate_up_current_and_down(fresh_database: str) -> None:
    up = zeitwork("migrate", DATABASE_URL=fresh_database)
    assert up.returncode == 0, up.stderr
    assert f"revision {migrate.head_revision()}" in up.stdout
    current = zeitwork("migrate", "current", DATABASE_URL=fresh_database)
    assert f"revision {migrate.head_revision()}" in current.stdout
    down = zeitwork("migrate", "downgrade", "base", DATABASE_URL=fresh_database)
    assert down.returncode == 0, down.stderr
    assert "base (empty)" in down.stdout
    assert migrate.current_revision(fresh_database) is None


def test_migrate_against_a_dead_database_is_one_line(tmp_path: Path) -> None:
    result = zeitwork("migrate", DATABASE_URL=f"postgresql://postgres@/x?host={tmp_path}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("zeitwork: cannot connect to the database")


def test_token_create_prints_a_working_token(migrated_database: str) -> None:
    result = zeitwork(
        "token", "create", "--scope", "join", "--name", "ci", DATABASE_URL=migrated_database
    )
    assert result.returncode == 0, result.stderr
    secret = result.stdout.strip()
    assert secret.startswith("zw_")
    digest = hashlib.sha256(secret.encode()).hexdigest()
    with psycopg.connect(migrated_database) as conn:
        row = conn.execute(
            "SELECT scope, name FROM api_tokens WHERE token_hash = %s", (digest,)
        ).fetchone()
    assert row == ("join", "ci")
    bad = zeitwork("token", "create", "--scope", "root", DATABASE_URL=migrated_database)
    assert bad.returncode == 2


def test_bad_setting_is_exit_2() -> None:
    result = zeitwork("operator", ZEITWORK_NODE_HEARTBEAT_TIMEOUT="soon")
    assert result.returncode == 2
    assert "ZEITWORK_NODE_HEARTBEAT_TIMEOUT" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_operator_refuses_an_old_schema(fresh_database: str) -> None:
    result = zeitwork("operator", DATABASE_URL=fresh_database, ENVIRONMENT="production", PORT="0")
    assert result.returncode == 1
    assert "zeitwork migrate" in result.stderr
    assert "Traceback" not in result.stderr
    assert migrate.current_revision(fresh_database) is None  # nothing was changed


def test_new_revision_is_numbered_on_top_of_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", copy)
    before = migrate.head_revision()
    path = migrate.new_revision("add widgets")
    assert path.parent == copy / "versions"
    text = path.read_text()
    expected = f"{int(before) + 1:04d}"
    assert path.name == f"{expected}_add_widgets.py"
    assert f"revision = {expected!r}" in text
    assert f"down_revision = {before!r}" in text
    assert migrate.head_revision() == expected


class Running:
    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc = proc
        self.log = log

    def wait_started(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            match = re.search(r"operator\.started\s.*port=(\d+)", text)
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited early:\n{text}")
            time.sleep(0.05)
        raise AssertionError(f"operator did not start:\n{self.log.read_text()}")

    def stop(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def start_operator(tmp_path: Path) -> Iterator[object]:
    started: list[Running] = []

    def start(**env: str) -> Running:
        log = tmp_path / f"operator-{len(started)}.log"
        handle = log.open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "zeitwork", "operator"],
            env=_env(HOST="127.0.0.1", PORT="0", **env),
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
        )
        handle.close()
        running = Running(proc, log)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()


def test_operator_serves_and_drains_on_sigterm(migrated_database: str, start_operator) -> None:  # type: ignore[no-untyped-def]
    op = start_operator(DATABASE_URL=migrated_database, ZEITWORK_ADMIN_TOKEN=ADMIN)
    port = op.wait_started()
    base = f"http://127.0.0.1:{port}"
    r = httpx.get(f"{base}/api/v1/nodes", headers={"Authorization": f"Bearer {ADMIN}"})
    assert (r.status_code, r.json()) == (200, [])
    assert httpx.get(f"{base}/api/v1/nodes").status_code == 401
    assert httpx.get(f"{base}/health/ready").status_code == 200
    assert httpx.get(f"{base}/openapi.json").json()["info"]["title"] == "Zeitwork operator"
    assert op.stop() == 0
    assert "operator.stopped" in op.log.read_text()


@pytest.mark.slow
def test_embedded_postgres_keeps_data_across_restarts(start_operator, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # not under tmp_path: pytest keeps /tmp/pytest-of-root at 0700, which the server's
    # system user (as root) cannot traverse
    base = Path(tempfile.mkdtemp(prefix="zw-embedded-"))
    base.chmod(0o755)
    try:
        _embedded_restarts(base / "zw-data", start_operator)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _embedded_restarts(data: Path, start_operator) -> None:  # type: ignore[no-untyped-def]
    first = start_operator(ZEITWORK_DATA_DIR=str(data))
    port = first.wait_started(timeout=90)
    token_file = data / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    headers = {"Authorization": f"Bearer {token}"}
    body = {"hostname": "kept", "ip_address": "10.0.0.1", "resources": {"vcpu": 1, "memory": 256}}
    r = httpx.post(f"http://127.0.0.1:{port}/api/v1/nodes", headers=headers, json=body)
    assert r.status_code == 201, r.text
    assert first.stop() == 0
    assert "embedded_postgres.stopped" in first.log.read_text()
    assert not (data / "postgres" / "postmaster.pid").exists()  # the server really stopped

    second = start_operator(ZEITWORK_DATA_DIR=str(data))
    port = second.wait_started(timeout=90)
    assert token_file.read_text().strip() == token  # not replaced: the old token is live
    r = httpx.get(f"http://127.0.0.1:{port}/api/v1/nodes", headers=headers)
    assert [n["hostname"] for n in r.json()] == ["kept"]
    assert second.stop() == 0


def test_worker_processes_share_the_port_and_stop_together(  # type: ignore[no-untyped-def]
    migrated_database: str, start_operator
) -> None:
    import psutil

    op = start_operator(
        DATABASE_URL=migrated_database, ZEITWORK_ADMIN_TOKEN=ADMIN, ZEITWORK_WORKERS="2"
    )
    port = op.wait_started()
    deadline = time.monotonic() + 60
    while "operator.worker_started" not in op.log.read_text():
        assert time.monotonic() < deadline, op.log.read_text()
        time.sleep(0.05)
    children = psutil.Process(op.proc.pid).children(recursive=True)
    workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) == 1
    headers = {"Authorization": f"Bearer {ADMIN}"}
    for _ in range(20):  # new connections land on either process; all answer
        with httpx.Client() as client:
            assert (
                client.get(f"http://127.0.0.1:{port}/api/v1/nodes", headers=headers).status_code
                == 200
            )
    assert op.stop() == 0
    assert not workers[0].is_running() or workers[0].status() == psutil.STATUS_ZOMBIE


def test_unknown_revision_is_a_clear_error(migrated_database: str) -> None:
    with psycopg.connect(migrated_database, autocommit=True) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    result = zeitwork("migrate", DATABASE_URL=migrated_database)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("zeitwork: migration failed")
    refused = zeitwork(
        "operator", DATABASE_URL=migrated_database, ENVIRONMENT="production", PORT="0"
    )
    assert refused.returncode == 1
    assert "9999, which this operator does not know" in refused.stderr
