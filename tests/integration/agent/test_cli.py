"""``zeitwork node-agent`` refuses bad configuration with one line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "ZEITWORK_DATA_DIR": str(tmp_path / "data"),
        "ZEITWORK_RUN_DIR": str(tmp_path / "run"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "zeitwork", "node-agent"],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ZEITWORK_NODE_SUBNET", "10.0.0.1/24"),
        ("ZEITWORK_RUNTIME", "docker"),
        ("ZEITWORK_PEER_ROUTES", "nonsense"),
        ("PORT", "70000"),
    ],
)
def test_bad_settings_exit_2_with_one_line(tmp_path: Path, variable: str, value: str) -> None:
    result = _run(tmp_path, **{variable: value})
    assert result.returncode == 2
    assert variable in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_forced_firecracker_without_binaries_says_what_is_missing(tmp_path: Path) -> None:
    result = _run(tmp_path, ZEITWORK_RUNTIME="firecracker")
    assert result.returncode == 1
    assert "zeitwork node-agent: ZEITWORK_RUNTIME=firecracker but" in result.stderr
    assert "FIRECRACKER_KERNEL" in result.stderr
    assert "Traceback" not in result.stderr
