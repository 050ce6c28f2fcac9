"""The edge as a process: SIGHUP reloads it, and a restart under load (a successor on the
same ports, then SIGTERM to the old one) refuses no connection."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.edge.conftest import Upstream
from tests.integration.edge.test_workers import _edge_process, _reap, _wait_line


async def _line(proc: subprocess.Popen[str], pattern: str, log: list[str]) -> re.Match[str]:
    # the pipe is read in a thread: the upstream and the load run on this loop meanwhile
    return await asyncio.to_thread(_wait_line, proc, pattern, log)


async def _get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET %s HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n" % path)
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sighup_reloads_without_stopping(
    upstream: Upstream, tmp_path: Path, workers: str
) -> None:
    proc = _edge_process(upstream, tmp_path, EDGE_WORKERS=workers, EDGE_HTTPS_REDIRECT="false")
    log: list[str] = []
    try:
        started = await _line(proc, r"edge.started.* http=(\d+)", log)
        port = int(started.group(1))
        if workers == "2":
            await _line(proc, r"edge.started", log)  # both workers
        assert (await _get(port, b"/before")).startswith(b"HTTP/1.1 200")
        proc.send_signal(signal.SIGHUP)
        for _ in range(int(workers)):
            await _line(proc, r"edge.reloaded", log)
        assert proc.poll() is None
        assert (await _get(port, b"/after")).startswith(b"HTTP/1.1 200")
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    finally:
        _reap(proc)


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_restart_under_load_refuses_no_connection(
    upstream: Upstream, tmp_path: Path, workers: str
) -> None:
    old = _edge_process(
        upstream,
        tmp_path / "old",
        EDGE_WORKERS=workers,
        EDGE_HTTPS_REDIRECT="false",
        EDGE_HANDOFF_TIMEOUT="20",
        EDGE_DRAIN_TIMEOUT="5",
        # every request comes from one address at loop speed (over 1,000/s on the compiled
        # build): the per-address limit is not what this test is about
        RATE_LIMIT_RPS="100000",
    )
    new: subprocess.Popen[str] | None = None
    old_log: list[str] = []
    new_log: list[str] = []
    served = 0
    errors: list[str] = []
    done = asyncio.Event()

    async def client() -> None:
        # a bounded load loop: a new connection per request, until told to stop
        nonlocal served
        while not done.is_set():
            try:
                answer = await _get(port, b"/load")
            except (OSError, TimeoutError) as exc:
                errors.append(repr(exc))
                continue
            if answer.startswith(b"HTTP/1.1 200"):
                served += 1
            else:
                errors.append(answer[:80].decode("latin-1"))

    async def served_more(than: int) -> None:
        async with asyncio.timeout(20):
            while served < than:
                await asyncio.sleep(0.02)

    try:
        started = await _line(old, r"edge.started.* http=(\d+) https=(\d+)", old_log)
        port, https = int(started.group(1)), int(started.group(2))
        clients = [asyncio.create_task(client()) for _ in range(4)]
        await served_more(50)
        # SIGTERM first: the old edge keeps serving while it waits for a successor
        old.send_signal(signal.SIGTERM)
        await _line(old, r"edge.stopping", old_log)
        before = served
        await served_more(before + 50)
        new = _edge_process(
            upstream,
            tmp_path / "new",
            PORT=str(port),
            EDGE_HTTPS_PORT=str(https),
            EDGE_WORKERS=workers,
            EDGE_HTTPS_REDIRECT="false",
            RATE_LIMIT_RPS="100000",
        )
        await _line(new, r"edge.started", new_log)
        for _ in range(int(workers)):  # every old worker hands over, its queue emptied
            handed = await _line(old, r"edge.handed_off.*still_queued=(\d+)", old_log)
            assert handed.group(1) == "0"
        assert await asyncio.to_thread(old.wait, 15) == 0
        if workers != "1":  # the successor steers by client address again
            await _line(new, r"edge.steering_restored", new_log)
        after_old = served
        await served_more(after_old + 100)  # the successor serves alone now
        done.set()
        await asyncio.gather(*clients)
        assert errors == []
        assert served > after_old + 100
    finally:
        done.set()
        _reap(old)
        if new is not None:
            new.send_signal(signal.SIGTERM)
            _reap(new)
