"""WorkerPool with real forked workers: respawn, give up on fast failures, honest exit
status, SIGHUP forwarded (the supervisor runs as its own process: prefork_app.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from zeitwork.serving.prefork import RespawnPolicy

APP = Path(__file__).with_name("prefork_app.py")
LIMIT = 30.0  # s: generous, the machine may be loaded


class Supervisor:
    def __init__(self, mode: str, events: Path) -> None:
        self.events = events
        self.proc = subprocess.Popen(
            [sys.executable, str(APP), mode, str(events)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def lines(self) -> list[list[str]]:
        if not self.events.exists():
            return []
        return [line.split() for line in self.events.read_text().splitlines()]

    def starts(self, index: int) -> list[int]:
        return [int(pid) for event, i, pid in self.lines() if event == "start" and i == str(index)]

    def until(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + LIMIT
        while not check():
            assert self.proc.poll() is None, f"supervisor exited while waiting for {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        return self.proc.wait(timeout=LIMIT)

    def output(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.read()


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Callable[[str], Supervisor]]:
    made: list[Supervisor] = []

    def start(mode: str) -> Supervisor:
        made.append(Supervisor(mode, tmp_path / f"events-{len(made)}"))
        return made[-1]

    yield start
    for sup in made:
        if sup.proc.poll() is None:
            sup.proc.kill()
            sup.proc.wait()
        if sup.proc.stdout is not None:
            sup.proc.stdout.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_every_worker_and_exits_0(supervise: Callable[[str], Supervisor]) -> None:
    sup = supervise("serve")
    sup.until(lambda: sup.starts(0) and sup.starts(1), "both workers")
    workers = sup.starts(0) + sup.starts(1)
    assert sup.stop() == 0
    assert not any(_alive(pid) for pid in workers)
    assert "workers.stopping" in sup.output()


def test_a_crashed_worker_is_respawned_and_a_clean_stop_still_exits_0(
    supervise: Callable[[str], Supervisor],
) -> None:
    sup = supervise("crashes_once")
    sup.until(lambda: len(sup.starts(0)) == 2 and sup.starts(1), "worker 0 respawned")
    first, second = sup.starts(0)
    assert first != second
    assert len(sup.starts(1)) == 1  # the other worker was left alone
    assert sup.stop() == 0
    out = sup.output()
    assert "workers.crashed" in out and "RuntimeError: worker bug" in out
    assert "workers.respawning worker=0" in out


def test_repeated_fast_failures_stop_all_workers_and_exit_1(
    supervise: Callable[[str], Supervisor],
) -> None:
    sup = supervise("fails_fast")
    assert sup.wait() == 1  # nobody asked it to stop: it gave up by itself
    assert len(sup.starts(0)) == 3  # max_fast_failures
    (healthy,) = sup.starts(1)
    assert not _alive(healthy)  # stopped with the pool, not left serving alone
    out = sup.output()
    assert "workers.giving_up" in out and "fast_failures=3" in out


def test_a_worker_failing_on_its_way_down_makes_the_exit_status_1(
    supervise: Callable[[str], Supervisor],
) -> None:
    sup = supervise("fails_on_stop")
    sup.until(lambda: sup.starts(0) and sup.starts(1), "both workers")
    assert sup.stop() == 1


def test_sighup_is_forwarded_to_every_worker_as_a_reload(
    supervise: Callable[[str], Supervisor],
) -> None:
    sup = supervise("serve")
    sup.until(lambda: sup.starts(0) and sup.starts(1), "both workers")
    sup.proc.send_signal(signal.SIGHUP)

    def hups() -> list[str]:
        return sorted(i for event, i, _ in sup.lines() if event == "hup")

    sup.until(lambda: hups() == ["0", "1"], "both reloads")
    assert len(sup.starts(0)) == len(sup.starts(1)) == 1  # a reload, not a restart
    assert sup.stop() == 0


def test_back_off_doubles_up_to_the_cap() -> None:
    policy = RespawnPolicy(base_delay=0.5, max_delay=8.0)
    assert [policy.delay(n) for n in range(7)] == [0.5, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
