"""The runc wrapper: a runtime that never answers is a RuntimeFailure, not a hang."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from zeitwork.core.errors import RuntimeFailure
from zeitwork.runtime.oci.runc import RuncCli


def _fake_runtime(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-runc"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


async def test_a_hung_runtime_call_times_out_and_is_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    binary = _fake_runtime(tmp_path, f"echo $$ > {pid_file}\nexec sleep 60")
    runc = RuncCli(binary=binary, root=tmp_path / "root", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RuntimeFailure, match="no answer within"):
        await asyncio.wait_for(runc.state("zw-x"), 10)
    assert time.monotonic() - started < 5
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(pid, 0)


async def test_a_quick_answer_is_returned(tmp_path: Path) -> None:
    binary = _fake_runtime(tmp_path, """echo '{"status": "running", "pid": 7}'""")
    runc = RuncCli(binary=binary, root=tmp_path / "root", timeout=5)
    assert await runc.state("zw-x") == {"status": "running", "pid": 7}
