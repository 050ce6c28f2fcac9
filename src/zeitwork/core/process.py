"""Process helpers shared by the services' supervisors."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM, *, parent: int | None = None) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux), so that
    a worker or child whose supervisor was killed outright (SIGKILL, OOM) drains and exits
    instead of serving on unsupervised. Safe between fork and exec; a no-op elsewhere.

    ``parent``: the supervisor's pid, read before forking; if it is already gone (it died
    between the fork and this call, and the kernel had no one to signal), exit now."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
    if parent is not None and os.getppid() != parent:
        os._exit(1)
