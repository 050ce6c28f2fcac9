"""A supervisor for the WorkerPool tests, run as its own process (it blocks signals and
forks, which a test must not do to the pytest process): ``prefork_app.py MODE EVENTS``.

Each worker appends ``<event> <index> <pid>`` lines to EVENTS (O_APPEND, one write each)."""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from zeitwork.serving.prefork import RespawnPolicy, WorkerPool

MODE, EVENTS = sys.argv[1], Path(sys.argv[2])


def record(event: str, index: int) -> None:
    fd = os.open(EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event} {index} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def serve(index: int, *, exit_code: int = 0) -> None:
    """Wait for SIGTERM like a worker draining; record SIGHUPs (reloads)."""

    def hangup(signum: int, frame: Any) -> None:
        record("hup", index)

    signal.signal(signal.SIGHUP, hangup)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(exit_code))
    record("start", index)
    while True:
        time.sleep(3600)


def target(index: int) -> None:
    starts = EVENTS.read_text().count(f"start {index} ") if EVENTS.exists() else 0
    if MODE == "fails_fast" and index == 0:
        record("start", index)
        sys.exit(3)
    if MODE == "crashes_once" and index == 0 and starts == 0:
        record("start", index)
        raise RuntimeError("worker bug")
    serve(index, exit_code=2 if MODE == "fails_on_stop" and index == 1 else 0)


class PrintLog:
    def _emit(self, event: str, **kw: Any) -> None:
        print(event, *(f"{k}={v}" for k, v in sorted(kw.items())), flush=True)

    info = warning = error = _emit

    def exception(self, event: str, **kw: Any) -> None:
        self._emit(event, **kw)
        traceback.print_exc(file=sys.stdout)


policy = RespawnPolicy(base_delay=0.05, max_delay=0.2, healthy_after=30.0, max_fast_failures=3)
sys.exit(WorkerPool(workers=2, target=target, log=PrintLog(), policy=policy).run())
