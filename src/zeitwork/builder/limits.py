"""A build's memory and CPU limits, in a cgroup of its own.

Where systemd runs, the build runs in a transient scope (``systemd-run --scope -p
MemoryMax=... -p CPUQuota=...``; ``Runner._limited``). Elsewhere, on a host whose memory and
cpu controllers are cgroup v1 (also the hybrid layout of this project's machines), the
builder makes ``zeitwork-build-<id>`` under its own cgroup in each controller, sets
``memory.limit_in_bytes`` (and the memory+swap limit, so a build does not swap instead) and
``cpu.cfs_quota_us``, and starts the tool through a launcher that enters the cgroup and
then execs it (``BuildCgroup.wrap``): the tool and all it forks, RUN steps included, are
born inside. A pure cgroup v2 host
without systemd gets no limit (the builder logs it): the wall-clock timeout and the
process-group kill still apply.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zeitwork.runtime.oci import cgroups

# The launcher's program (constant; the directories and the argv come as its arguments):
# write its own pid into each directory's cgroup.procs, then exec the tool.
_ENTER = (
    "import os, sys\n"
    "end = sys.argv.index('--')\n"
    "for d in sys.argv[1:end]:\n"
    "    fd = os.open(os.path.join(d, 'cgroup.procs'), os.O_WRONLY)\n"
    "    os.write(fd, str(os.getpid()).encode())\n"
    "    os.close(fd)\n"
    "os.execvp(sys.argv[end + 1], sys.argv[end + 1:])\n"
)
_SIZE = re.compile(r"^([0-9]+)([KMG]?)$")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
PERIOD_US = 100_000


def parse_size(text: str) -> int:
    """``2G``, ``512M``, ``1024K`` or bytes -> bytes (pure)."""
    match = _SIZE.match(text.strip())
    if match is None:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def own_path(controller: str, proc_cgroup: str) -> str | None:
    """This process's cgroup in a v1 ``controller``, from ``/proc/self/cgroup`` (pure)."""
    for line in proc_cgroup.splitlines():
        _, names, path = [*line.split(":", 2), "", ""][:3]
        if controller in names.split(","):
            return path
    return None


@dataclass
class BuildCgroup:
    relative: str
    """the memory cgroup's path relative to its hierarchy (for OOM counts)"""
    directories: list[Path]

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` started by a launcher that enters this cgroup first and then execs it,
        so the tool and everything it forks are born inside (no window in which a wrapper
        that forks at once, ``runner.sandbox``, has a child outside)."""
        dirs = [str(d) for d in self.directories]
        return [sys.executable, "-I", "-S", "-c", _ENTER, *dirs, "--", *argv]

    def oom_killed(self) -> bool:
        return cgroups.oom_kills(self.relative, root=cgroups.CGROUP_ROOT) > 0

    def remove(self) -> None:
        for directory in self.directories:
            with contextlib.suppress(OSError):  # still busy: the next start's clean-up
                os.rmdir(directory)


def create(name: str, *, memory: str, cpu: str) -> BuildCgroup | None:
    """A v1 cgroup for one build with these limits, or None where that is not possible."""
    root = cgroups.CGROUP_ROOT
    if cgroups.is_unified(root) or not (memory or cpu):
        return None
    try:
        proc = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    made: list[Path] = []
    relative = ""
    try:
        if memory:
            base = own_path("memory", proc)
            if base is None:
                return None
            relative = f"{base.rstrip('/')}/{name}"
            directory = root / "memory" / relative.lstrip("/")
            directory.mkdir(exist_ok=True)
            made.append(directory)
            limit = str(parse_size(memory))
            (directory / "memory.limit_in_bytes").write_text(limit)
            with contextlib.suppress(OSError):  # no swap accounting: the memory limit holds
                (directory / "memory.memsw.limit_in_bytes").write_text(limit)
        if cpu:
            base = own_path("cpu", proc)
            if base is None:
                return None
            directory = root / "cpu" / f"{base.rstrip('/')}/{name}".lstrip("/")
            directory.mkdir(exist_ok=True)
            made.append(directory)
            percent = int(cpu.rstrip("%"))
            (directory / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (directory / "cpu.cfs_quota_us").write_text(str(PERIOD_US * percent // 100))
    except OSError:
        for directory in made:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
        return None
    return BuildCgroup(relative=relative, directories=made)
