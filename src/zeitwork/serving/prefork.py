"""The pre-fork supervisor the edge and the load balancer share: N forked workers on
listeners made before the fork, one policy for when a worker dies.

Policy (the same for every service; docs/load-balancer.md and docs/edge-proxy.md describe it):

- A worker that exits while the pool is not stopping is **respawned** on the same index (so
  on the same listener, whose accept queue keeps the connections that arrive meanwhile, and
  at the same place in its SO_REUSEPORT group, which steering and handoffs count on).
- The respawn waits a **back-off**: ``base_delay`` after the first fast failure of that
  worker, doubling with each further one up to ``max_delay``. A worker that ran for at
  least ``healthy_after`` s before dying is not failing fast: its streak starts again.
- A worker that fails fast ``max_fast_failures`` times in a row means the service cannot
  run here (bad config, a port taken, a bug at start): the pool **stops every worker**
  (SIGTERM, they drain) and exits 1, rather than flapping for ever.
- SIGTERM and SIGINT stop the pool: each worker is sent SIGTERM (it hands off and drains);
  the pool waits for all of them. SIGHUP is passed to every worker as a **reload**.
- The **exit status** is honest: 0 only when the pool was asked to stop and every worker
  then exited 0; 1 when it gave up, or when a worker failed on its way down.
  A crash that was respawned from is logged (``workers.exited``), not turned into a
  failed exit much later.

The supervisor waits with ``sigtimedwait`` (the signals blocked, not handled), so a signal
is never lost between a check and a wait, and back-off sleeps end at once on SIGTERM.
``run`` must be called from the main thread before the process has started any other
thread (as both services do): a process-wide signal must reach the waiting thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zeitwork.core.process import die_with_parent

_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})


@dataclass(frozen=True, slots=True)
class RespawnPolicy:
    """When a dead worker is started again, and when the pool gives up (see the module)."""

    base_delay: float = 0.5
    max_delay: float = 8.0
    healthy_after: float = 30.0
    max_fast_failures: int = 5

    def delay(self, streak: int) -> float:
        """The wait before respawning a worker that has failed fast ``streak`` times."""
        return min(self.max_delay, self.base_delay * 2.0 ** max(0, streak - 1))


def _exit_code(wait_status: int) -> int:
    return os.waitstatus_to_exitcode(wait_status)


class WorkerPool:
    """Fork ``workers`` processes running ``target(index)`` and supervise them (policy above).

    ``target`` runs in the child, with SIGTERM/SIGINT at their defaults, SIGHUP ignored until
    the worker installs its own handler, and ``PR_SET_PDEATHSIG`` set (a supervisor killed
    outright takes its workers with it); it closes what belongs to other workers and serves.
    Returning is exit 0, ``SystemExit`` its code, any other exception is logged and exit 1.
    """

    def __init__(
        self,
        *,
        workers: int,
        target: Callable[[int], None],
        log: Any,
        policy: RespawnPolicy | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.workers = workers
        self._target = target
        self._log = log
        self.policy = policy or RespawnPolicy()
        self._children: dict[int, tuple[int, float]] = {}  # pid -> (index, started at)
        self._streaks = [0] * workers
        self._respawn_at: dict[int, float] = {}  # index -> monotonic time
        self._stopping = False
        self._gave_up = False
        self._status = 0

    @property
    def pids(self) -> list[int]:
        return list(self._children)

    def run(self) -> int:
        """Start every worker, supervise until they are all gone, return the exit status."""
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        # a blocked SIGCHLD at its default disposition may be discarded: give it a handler
        old_chld = signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        try:
            for index in range(self.workers):
                self._spawn(index)
            while self._children or (self._respawn_at and not self._stopping):
                self._wait_once()
        finally:
            signal.signal(signal.SIGCHLD, old_chld)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        return 1 if self._gave_up else self._status

    def _wait_once(self) -> None:
        timeout = None
        if self._respawn_at and not self._stopping:
            timeout = max(0.0, min(self._respawn_at.values()) - time.monotonic())
        if timeout is None:
            info = signal.sigwaitinfo(_SIGNALS)
            signum: int | None = info.si_signo
        else:
            got = signal.sigtimedwait(_SIGNALS, timeout)
            signum = got.si_signo if got is not None else None
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stop()
        elif signum == signal.SIGHUP:
            self._log.info("workers.reload", workers=len(self._children))
            self._signal_all(signal.SIGHUP)
        self._reap()
        if not self._stopping:
            now = time.monotonic()
            for index, due in sorted(self._respawn_at.items()):
                if due <= now:
                    del self._respawn_at[index]
                    self._log.info("workers.respawning", worker=index)
                    self._spawn(index)

    def stop(self) -> None:
        """Send every worker SIGTERM and start no more (also what a SIGTERM to the pool does)."""
        if not self._stopping:
            self._log.info("workers.stopping", workers=len(self._children))
        self._stopping = True
        self._respawn_at.clear()
        self._signal_all(signal.SIGTERM)

    def _signal_all(self, signum: int) -> None:
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self) -> None:
        while self._children:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self._children.clear()
                return
            if pid == 0:
                return
            entry = self._children.pop(pid, None)
            if entry is not None:
                self._exited(entry[0], _exit_code(wait_status), time.monotonic() - entry[1])

    def _exited(self, index: int, code: int, lived: float) -> None:
        if self._stopping:
            if code != 0:
                self._log.warning("workers.exited", worker=index, code=code, stopping=True)
                self._status = 1
            return
        fast = lived < self.policy.healthy_after
        self._streaks[index] = self._streaks[index] + 1 if fast else 0
        streak = self._streaks[index]
        if streak >= self.policy.max_fast_failures:
            self._log.error("workers.giving_up", worker=index, code=code, fast_failures=streak)
            self._gave_up = True
            self.stop()
            return
        delay = self.policy.delay(streak)
        self._log.error(
            "workers.exited", worker=index, code=code, lived=round(lived, 2), respawn_in=delay
        )
        self._respawn_at[index] = time.monotonic() + delay

    def _spawn(self, index: int) -> None:
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker handles it
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                die_with_parent(parent=supervisor)
                self._target(index)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                self._log.exception("workers.crashed", worker=index)
                code = 1
            os._exit(code)
        self._children[pid] = (index, time.monotonic())
