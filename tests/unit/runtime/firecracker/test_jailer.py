from __future__ import annotations

from pathlib import Path

import pytest

from zeitwork.core.errors import InvalidInput
from zeitwork.runtime.firecracker import jailer

VM = "551e7604-e35c-42b3-b825-416853441234"


def test_exact_argv_cgroup_v2() -> None:
    cgroups = jailer.cgroup_limits(version=2, vcpu=1.5, memory_mib=256, overhead_mib=64)
    argv = jailer.jailer_argv(
        jailer_bin=Path("/usr/bin/jailer"),
        firecracker_bin=Path("/usr/bin/firecracker"),
        vm_id=VM,
        uid=10000,
        gid=10001,
        chroot_base=Path("/srv/jailer"),
        cgroup_version=2,
        cgroups=cgroups,
        parent_cgroup="zeitwork-firecracker",
    )
    assert argv == [
        "/usr/bin/jailer",
        "--id",
        VM,
        "--exec-file",
        "/usr/bin/firecracker",
        "--uid",
        "10000",
        "--gid",
        "10001",
        "--chroot-base-dir",
        "/srv/jailer",
        "--cgroup-version",
        "2",
        "--cgroup",
        "cpu.max=150000 100000",
        "--cgroup",
        "memory.max=335544320",
        "--parent-cgroup",
        "zeitwork-firecracker",
        "--new-pid-ns",
        "--",
        "--api-sock",
        "/run/firecracker.socket",
    ]


def test_exact_argv_cgroup_v1_with_netns_and_daemonize() -> None:
    cgroups = jailer.cgroup_limits(version=1, vcpu=0.25, memory_mib=128, overhead_mib=0)
    argv = jailer.jailer_argv(
        jailer_bin=Path("/opt/fc/jailer"),
        firecracker_bin=Path("/opt/fc/firecracker-v1.10"),
        vm_id="vm-1",
        uid=123,
        gid=100,
        chroot_base=Path("/var/lib/jail"),
        cgroup_version=1,
        cgroups=cgroups,
        netns="/var/run/netns/vm1",
        new_pid_ns=False,
        daemonize=True,
    )
    assert argv == [
        "/opt/fc/jailer",
        "--id",
        "vm-1",
        "--exec-file",
        "/opt/fc/firecracker-v1.10",
        "--uid",
        "123",
        "--gid",
        "100",
        "--chroot-base-dir",
        "/var/lib/jail",
        "--cgroup-version",
        "1",
        "--cgroup",
        "cpu.cfs_period_us=100000",
        "--cgroup",
        "cpu.cfs_quota_us=25000",
        "--cgroup",
        "memory.limit_in_bytes=134217728",
        "--netns",
        "/var/run/netns/vm1",
        "--daemonize",
        "--",
        "--api-sock",
        "/run/firecracker.socket",
    ]
    assert "--config-file" not in argv


@pytest.mark.parametrize(
    ("vm_id", "exec_name", "uid"),
    [
        ("a" * 65, "firecracker", 1),
        ("has space", "firecracker", 1),
        ("ok_under", "firecracker", 1),  # the jailer allows letters, digits and hyphens
        ("ok", "vmm", 1),
        ("ok", "firecracker", 0),
    ],
)
def test_argv_refuses_bad_input(vm_id: str, exec_name: str, uid: int) -> None:
    with pytest.raises(InvalidInput):
        jailer.jailer_argv(
            jailer_bin=Path("/j"),
            firecracker_bin=Path("/x") / exec_name,
            vm_id=vm_id,
            uid=uid,
            gid=1,
            chroot_base=Path("/srv/jailer"),
            cgroup_version=2,
            cgroups=[],
        )


def test_cgroup_limits_and_dirs() -> None:
    assert jailer.cgroup_limits(version=2, vcpu=0.001, memory_mib=1, overhead_mib=0)[0] == (
        "cpu.max",
        "1000 100000",
    )
    with pytest.raises(InvalidInput):
        jailer.cgroup_limits(version=2, vcpu=0, memory_mib=128, overhead_mib=0)
    files = [n for n, _ in jailer.cgroup_limits(version=1, vcpu=1, memory_mib=1, overhead_mib=0)]
    assert jailer.cgroup_dirs(
        version=1, root=Path("/sys/fs/cgroup"), parent="p", vm_id="v", files=files
    ) == [Path("/sys/fs/cgroup/cpu/p/v"), Path("/sys/fs/cgroup/memory/p/v")]
    assert jailer.cgroup_dirs(
        version=2, root=Path("/sys/fs/cgroup"), parent="p", vm_id="v", files=["cpu.max"]
    ) == [Path("/sys/fs/cgroup/p/v")]


@pytest.mark.parametrize(("vcpu", "count"), [(0.1, 1), (1, 1), (1.01, 2), (4, 4), (100, 32)])
def test_vcpu_count(vcpu: float, count: int) -> None:
    assert jailer.vcpu_count(vcpu) == count


def test_jail_paths() -> None:
    paths = jailer.jail_paths(
        chroot_base=Path("/srv/jailer"), firecracker_bin=Path("/usr/bin/firecracker"), vm_id=VM
    )
    assert paths.root == Path(f"/srv/jailer/firecracker/{VM}/root")
    assert paths.api_socket == paths.root / "run/firecracker.socket"
    assert paths.pid_file == paths.root / "firecracker.pid"
    assert paths.inside("vmlinux") == "/vmlinux"
