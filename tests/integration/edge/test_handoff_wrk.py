"""The edge restarted under wrk (a successor on the same ports, then SIGTERM to the old
one): no socket error and no failed request, for a connection per request and for
keep-alive connections, with one worker and with two (issue 19: "a test restarts the edge
and the load balancer under wrk and sees no connection error")."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.edge.conftest import Upstream
from tests.integration.edge.test_restart import _line
from tests.integration.edge.test_workers import _edge_process, _reap
from tests.integration.lb.test_restart import Wrk, needs_wrk


@pytest.mark.slow
@needs_wrk
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_restart_under_wrk_fails_no_request(
    upstream: Upstream, tmp_path: Path, workers: str
) -> None:
    common = {
        "EDGE_WORKERS": workers,
        "EDGE_HTTPS_REDIRECT": "false",
        "EDGE_DRAIN_TIMEOUT": "5",
        "RATE_LIMIT_RPS": "100000",  # one client address at wrk's rate
    }
    old = _edge_process(upstream, tmp_path / "old", EDGE_HANDOFF_TIMEOUT="30", **common)
    new: subprocess.Popen[str] | None = None
    old_log: list[str] = []
    new_log: list[str] = []
    loads: list[Wrk] = []
    try:
        started = await _line(old, r"edge.started.* http=(\d+) https=(\d+)", old_log)
        port, https = int(started.group(1)), int(started.group(2))
        if workers == "2":
            await _line(old, r"edge.started", old_log)
        loads += [
            await Wrk(port, 16, keep_alive=False, host="app.test").start(),
            await Wrk(port, 16, keep_alive=True, host="app.test").start(),
        ]
        await asyncio.sleep(2)
        old.send_signal(signal.SIGTERM)  # it keeps serving while it waits for a successor
        await _line(old, r"edge.stopping", old_log)
        await asyncio.sleep(1)
        new = _edge_process(
            upstream, tmp_path / "new", PORT=str(port), EDGE_HTTPS_PORT=str(https), **common
        )
        await _line(new, r"edge.started", new_log)
        for _ in range(int(workers)):
            handed = await _line(old, r"edge.handed_off.*still_queued=(\d+)", old_log)
            assert handed.group(1) == "0"
        assert await asyncio.to_thread(old.wait, 20) == 0
        served_before = len(upstream.seen)
        results = [await load.result() for load in loads]
        assert len(upstream.seen) > served_before  # the successor served alone for a while
        for load, result in zip(loads, results, strict=True):
            assert result["requests"] > 100, load.output
            failed = {k: v for k, v in result.items() if k != "requests" and v}
            assert failed == {}, (" ".join(load.argv), load.output)
    finally:
        for load in loads:
            if load.proc is not None and load.proc.returncode is None:
                load.proc.kill()
                await load.proc.wait()
        _reap(old)
        if new is not None:
            new.send_signal(signal.SIGTERM)
            await asyncio.to_thread(new.wait, 20)
            _reap(new)
