"""The OCI runtime configuration (``config.json``) of one instance, built by a pure function.

What it enforces: the image's process as the image's user; only a minimal capability set
(runc's default: kill, net_bind_service, audit_write; net_bind_service also ambient so a
non-root app can bind port 80); ``noNewPrivileges``; its own PID, mount, UTS and IPC
namespaces and the network namespace the agent prepared; CPU quota from ``vcpu``, a hard
memory limit without swap from ``memory``, a pids limit; the usual masked and read-only
kernel paths; a seccomp filter denying kernel surface apps do not need (see
``DENIED_SYSCALLS``).
"""

from __future__ import annotations

from typing import Any

from zeitwork.core.errors import InvalidInput
from zeitwork.runtime.base import InstanceSpec

CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
AMBIENT = ["CAP_NET_BIND_SERVICE"]

MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
]
READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]


# Seccomp: everything allowed except kernel surface an app has no business with (module
# loading, kexec, mounts, namespaces, keyrings, bpf, perf, userfaultfd, clock/time setting,
# swap, reboot, quotas, ...). Most of these also need capabilities the container lacks; the
# filter is the second fence. clone() with namespace flags is refused, clone3() answers
# ENOSYS so that libcs fall back to the filterable clone().
EPERM = 1
ENOSYS = 38
DENIED_SYSCALLS = sorted(
    [
        "_sysctl",
        "acct",
        "add_key",
        "bpf",
        "clock_adjtime",
        "clock_settime",
        "create_module",
        "delete_module",
        "finit_module",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "get_kernel_syms",
        "init_module",
        "ioperm",
        "iopl",
        "kexec_file_load",
        "kexec_load",
        "keyctl",
        "lookup_dcookie",
        "mount",
        "mount_setattr",
        "move_mount",
        "name_to_handle_at",
        "nfsservctl",
        "open_by_handle_at",
        "open_tree",
        "perf_event_open",
        "pivot_root",
        "query_module",
        "quotactl",
        "reboot",
        "request_key",
        "setns",
        "settimeofday",
        "stime",
        "swapoff",
        "swapon",
        "syslog",
        "umount",
        "umount2",
        "unshare",
        "uselib",
        "userfaultfd",
        "ustat",
        "vm86",
        "vm86old",
    ]
)
NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


def seccomp_profile() -> dict[str, Any]:
    """The default seccomp filter (pure): allow by default, deny the list above."""
    rules: list[dict[str, Any]] = [
        {"names": list(DENIED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ]
    for flag in NAMESPACE_FLAGS:
        rules.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules,
    }


def container_id(spec_id: str) -> str:
    return f"zw-{spec_id}"


def parse_user(user: str) -> tuple[int, int]:
    """``"uid:gid"`` (numeric; the agent resolves names against the image's /etc/passwd)."""
    uid_text, _, gid_text = user.partition(":")
    try:
        uid = int(uid_text)
        gid = int(gid_text) if gid_text else uid
    except ValueError as exc:
        raise InvalidInput(f"user must be numeric uid:gid, got {user!r}") from exc
    if uid < 0 or gid < 0:
        raise InvalidInput(f"user must be non-negative, got {user!r}")
    return uid, gid


def cpu_quota(vcpu: float) -> int:
    return max(MIN_CPU_QUOTA_US, round(vcpu * CPU_PERIOD_US))


def build_config(
    spec: InstanceSpec,
    *,
    netns_path: str,
    cgroups_path: str,
    rootfs: str = "rootfs",
    resolv_conf: str | None = None,
    hosts: str | None = None,
    nofile: int = 4096,
) -> dict[str, Any]:
    """The OCI config for ``spec`` (pure: same input, same output)."""
    if not spec.process.argv:
        raise InvalidInput("the image defines no entrypoint or command to run")
    if spec.memory_mib <= 0 or spec.vcpu <= 0:
        raise InvalidInput("vcpu and memory must be positive")
    uid, gid = parse_user(spec.process.user)
    env = dict(spec.process.env)
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOSTNAME", spec.hostname or container_id(spec.instance_id.hex[:12]))
    env.setdefault("HOME", "/root" if uid == 0 else "/")
    memory_bytes = spec.memory_mib * 1024 * 1024
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
        },
        {
            "destination": "/dev/shm",  # noqa: S108 (inside the container)
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/tmp",  # noqa: S108 (inside the container)
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", f"size={max(1, spec.memory_mib // 4)}m"],
        },
    ]
    for source, destination in ((resolv_conf, "/etc/resolv.conf"), (hosts, "/etc/hosts")):
        if source is not None:
            mounts.append(
                {
                    "destination": destination,
                    "type": "bind",
                    "source": source,
                    "options": ["rbind", "ro", "nosuid", "nodev", "noexec"],
                }
            )
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": list(spec.process.argv),
            "env": [f"{key}={value}" for key, value in sorted(env.items())],
            "cwd": spec.process.cwd or "/",
            "capabilities": {
                "bounding": list(CAPABILITIES),
                "effective": list(CAPABILITIES),
                "permitted": list(CAPABILITIES),
                # an ambient capability must also be inheritable, else the kernel refuses
                # to raise it (and runc only warns): non-root apps could not bind port 80
                "inheritable": list(AMBIENT),
                "ambient": list(AMBIENT),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": False},
        "hostname": spec.hostname or container_id(spec.instance_id.hex[:12]),
        "mounts": mounts,
        "annotations": {
            "io.zeitwork.instance": str(spec.instance_id),
            "io.zeitwork.image": spec.image_digest,
        },
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "memory": {"limit": memory_bytes, "swap": memory_bytes},
                "cpu": {"quota": cpu_quota(spec.vcpu), "period": CPU_PERIOD_US},
                "pids": {"limit": spec.pids_limit},
            },
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": netns_path},
            ],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
            "seccomp": seccomp_profile(),
        },
    }
