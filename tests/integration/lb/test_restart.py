"""The load balancer as a process: a restart under wrk (a successor on the same port, SIGTERM
to the old one) refuses no connection and fails no request, with one worker and with two;
SIGHUP reloads without dropping a connection."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.lb.conftest import LBProcess, MakeOrigin

StartLB = Callable[..., LBProcess]

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


def events(lb: LBProcess, name: str) -> list[dict[str, Any]]:
    # Several worker processes write this one file: a record can be read half-written (the
    # text after the last newline is left for the next read) and two records can share a
    # line (each is decoded on its own).
    text = lb.log.read_text()
    decoder = json.JSONDecoder()
    out = []
    for line in text[: text.rfind("\n") + 1].splitlines():
        at = 0
        while at < len(line):
            try:
                record, end = decoder.raw_decode(line, at)
            except json.JSONDecodeError:
                break
            if isinstance(record, dict) and record.get("event") == name:
                out.append(record)
            at = end
            while at < len(line) and line[at].isspace():
                at += 1
    return out


async def wait_events(lb: LBProcess, name: str, count: int = 1, timeout: float = 30) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = events(lb, name)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {count} x {name} within {timeout} s:\n{lb.log.read_text()[-4000:]}")


class Wrk:
    """``wrk`` against a port for ``seconds``; its summary parsed once it is done."""

    def __init__(self, port: int, seconds: int, *, keep_alive: bool, host: str = "") -> None:
        self.argv = ["wrk", "-t2", "-c8", f"-d{seconds}s", "--timeout", "10s"]
        if host:
            self.argv += ["-H", f"Host: {host}"]
        if not keep_alive:  # a new connection for every request: each meets the listener
            self.argv += ["-H", "Connection: close"]
        self.argv.append(f"http://127.0.0.1:{port}/")
        self.proc: asyncio.subprocess.Process | None = None
        self.output = ""

    async def start(self) -> Wrk:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        return self

    async def result(self) -> dict[str, int]:
        assert self.proc is not None
        out, _ = await self.proc.communicate()
        self.output = out.decode(errors="replace")
        requests = re.search(r"(\d+) requests in", self.output)
        assert requests, self.output
        errors = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", self.output
        )
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", self.output)
        connect, read, write, timeout = (int(n) for n in errors.groups()) if errors else (0,) * 4
        return {
            "requests": int(requests.group(1)),
            "connect": connect,
            "read": read,
            "write": write,
            "timeout": timeout,
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
        }


@pytest.mark.slow
@needs_wrk
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_restart_under_wrk_refuses_no_connection_and_fails_no_request(
    make_origin: MakeOrigin, lb_process: StartLB, workers: str
) -> None:
    origin = await make_origin("app")
    settings = {
        "LB_WORKERS": workers,
        "LB_BACKENDS": origin.address,
        "LB_HANDOFF_TIMEOUT": "30",
        "LB_DRAIN_TIMEOUT": "5",
    }
    old = await asyncio.to_thread(lb_process, **settings)
    port = old.port
    loads: list[Wrk] = []
    try:
        # both kinds of client: a connection per request, and keep-alive connections
        loads += [
            await Wrk(port, 16, keep_alive=False).start(),
            await Wrk(port, 16, keep_alive=True).start(),
        ]
        await asyncio.sleep(2)
        before = origin.hits
        assert before > 0
        # SIGTERM first: the old balancer keeps serving while it waits for a successor
        old.proc.send_signal(signal.SIGTERM)
        await wait_events(old, "lb.stopping", int(workers))
        await asyncio.sleep(1)
        assert origin.hits > before  # still served, nothing handed over yet
        successor = settings | {"PORT": str(port), "LB_HANDOFF_TIMEOUT": "0"}
        new = await asyncio.to_thread(lb_process, **successor)
        handed = await wait_events(old, "lb.handed_off", int(workers))
        assert [e["still_queued"] for e in handed] == [0] * int(workers)
        assert await asyncio.to_thread(old.proc.wait, 20) == 0
        await wait_events(new, "lb.steering_restored")  # the kernel spreads over its workers
        after_old = origin.hits
        results = [await load.result() for load in loads]
        assert origin.hits > after_old  # the successor served alone for a while
        for load, result in zip(loads, results, strict=True):
            assert result["requests"] > 100, load.output
            failed = {k: v for k, v in result.items() if k != "requests" and v}
            assert failed == {}, (" ".join(load.argv), load.output)
        assert new.proc.poll() is None
    finally:
        for load in loads:
            if load.proc is not None and load.proc.returncode is None:
                load.proc.kill()
                await load.proc.wait()


async def test_sighup_reloads_without_dropping_a_connection(
    make_origin: MakeOrigin, lb_process: StartLB
) -> None:
    origin = await make_origin("app")
    lb = await asyncio.to_thread(lb_process, LB_WORKERS="2", LB_BACKENDS=origin.address)
    reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
    try:
        request = b"GET /who HTTP/1.1\r\nHost: app.test\r\n\r\n"
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        await reader.readexactly(int(re.findall(rb"content-length: (\d+)", head.lower())[0]))
        lb.proc.send_signal(signal.SIGHUP)
        reloaded = await wait_events(lb, "lb.reloaded", 2)  # each worker
        assert {e["routes"] for e in reloaded} == {"static"}
        # the same keep-alive connection is still served, and the balancer still runs
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        assert lb.proc.poll() is None
    finally:
        writer.close()
    assert lb.stop() == 0


_ACTIVATED = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); "
    "os.environ['LISTEN_PID'] = str(os.getpid()); os.environ['LISTEN_FDS'] = '1'; "
    "os.execv(sys.executable, [sys.executable, '-m', 'zeitwork', 'load-balancer'])"
)


def _activated_lb(sock: socket.socket, log: Path, env: dict[str, str]) -> LBProcess:
    """``zeitwork load-balancer`` given ``sock`` as systemd passes it (fd 3, LISTEN_PID,
    LISTEN_FDS), through a small exec wrapper that knows its own pid."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("LB_", "PORT", "ZEITWORK_"))}
    full |= {"ENVIRONMENT": "production", "HOST": "127.0.0.1", "LB_ADMIN_PORT": "0", **env}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _ACTIVATED, str(sock.fileno())],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(sock.fileno(),),
        )
    lb = LBProcess(proc, log)
    lb.wait_listening()
    return lb


@pytest.mark.slow
@needs_wrk
async def test_a_restart_on_systemds_socket_fails_no_request(
    make_origin: MakeOrigin, tmp_path: Path
) -> None:
    """Socket activation: the listener outlives the process (here the test holds it, as
    systemd does), so connections that come while no balancer runs wait in its queue."""
    origin = await make_origin("app")
    sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
    port = sock.getsockname()[1]
    env = {"LB_WORKERS": "2", "LB_BACKENDS": origin.address, "ZEITWORK_DATA_DIR": str(tmp_path)}
    running: list[LBProcess] = []
    loads: list[Wrk] = []
    try:
        running.append(await asyncio.to_thread(_activated_lb, sock, tmp_path / "a.log", env))
        assert running[0].port == port and events(running[0], "lb.listening")[0]["activated"]
        loads += [
            await Wrk(port, 12, keep_alive=False).start(),
            await Wrk(port, 12, keep_alive=True).start(),
        ]
        await asyncio.sleep(2)
        # systemctl restart: stop, then start (the origin runs on this loop meanwhile)
        assert await asyncio.to_thread(running[0].stop) == 0
        stopped_at = origin.hits
        running.append(await asyncio.to_thread(_activated_lb, sock, tmp_path / "b.log", env))
        results = [await load.result() for load in loads]
        assert origin.hits > stopped_at
        for load, result in zip(loads, results, strict=True):
            assert result["requests"] > 100, load.output
            failed = {k: v for k, v in result.items() if k != "requests" and v}
            assert failed == {}, (" ".join(load.argv), load.output)
    finally:
        for load in loads:
            if load.proc is not None and load.proc.returncode is None:
                load.proc.kill()
                await load.proc.wait()
        for lb in running:
            await asyncio.to_thread(lb.stop)
        sock.close()
