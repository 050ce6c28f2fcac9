"""Named network namespaces without forking: a worker thread unshares its own network
namespace, bind-mounts it to a file, and switches back.

Each namespace is a bind mount of ``/proc/thread-self/ns/net`` on a file in the agent's own
directory (not ``/run/netns``), so two agents on one kernel never see each other's. The agent
must run in the host's mount namespace (not under ``ip netns exec``, which gives it a
private one) for these mounts to outlive the agent process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from pathlib import Path

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str, target: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} failed: {os.strerror(err)}", target)


def _setns(fd: int) -> None:
    _check(_libc.setns(fd, CLONE_NEWNET), "setns", str(fd))


@contextlib.contextmanager
def entered(path: Path) -> Iterator[None]:
    """Run the body in the network namespace at ``path`` (this thread only), then return."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)


def create(path: Path) -> None:
    """Create a new network namespace pinned at ``path`` (blocking; call from a thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare", str(path))
            _check(
                _libc.mount(
                    b"/proc/thread-self/ns/net", str(path).encode(), b"none", MS_BIND, None
                ),
                "bind mount",
                str(path),
            )
        finally:
            _setns(original)
    except OSError:
        path.unlink(missing_ok=True)
        raise
    finally:
        os.close(original)


def remove(path: Path) -> None:
    """Unpin and delete the namespace file (idempotent)."""
    if not path.exists():
        return
    _libc.umount2(str(path).encode(), MNT_DETACH)  # fails harmlessly if not mounted
    path.unlink(missing_ok=True)


def is_pinned(path: Path) -> bool:
    """Whether ``path`` is a live namespace mount (not just a leftover empty file)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as info:
            target = str(path)
            return any(line.split()[4] == target for line in info)
    except OSError:
        return False
