from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from zeitwork.runtime.firecracker.driver import detect_cgroup_version, pid_is_vmm

SLEEP = "import time; time.sleep(60)"


@pytest.fixture
def spawn() -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> int:
        proc = subprocess.Popen([*argv], executable=sys.executable)
        procs.append(proc)
        return proc.pid

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_pid_is_vmm_matches_name_and_id(spawn) -> None:  # type: ignore[no-untyped-def]
    joined = spawn("/firecracker", "-c", SLEEP, "--id=vm-1", "--api-sock", "/run/x")
    split = spawn("firecracker", "-c", SLEEP, "--id", "vm-2")
    other = spawn("python", "-c", SLEEP, "--id=vm-3")
    assert pid_is_vmm(joined, "vm-1")
    assert not pid_is_vmm(joined, "vm-2")  # a reused pid of another VM is not ours
    assert pid_is_vmm(split, "vm-2")
    assert not pid_is_vmm(other, "vm-3")  # not a firecracker process
    assert not pid_is_vmm(2**22 + 12345, "vm-1")  # no such pid


def test_a_zombie_is_not_running(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = subprocess.Popen(["firecracker", "-c", "pass", "--id=vm-z"], executable=sys.executable)
    try:
        # Wait for it to exit without reaping it: it stays a zombie until wait().
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        assert not pid_is_vmm(proc.pid, "vm-z")
    finally:
        proc.wait()


def test_cgroup_version_detection(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert detect_cgroup_version(tmp_path) == 1
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    assert detect_cgroup_version(tmp_path) == 2
