"""A long SSE stream through the edge and the load balancer arrives whole (issue 19, "a
10-minute SSE stream arrives whole"): ``python benchmarks/long_stream.py`` (``make
bench-long-stream``; ``--minutes``, ``--interval``, ``--idle``).

Starts an app (a small asyncio HTTP server here) that answers ``GET /events`` with
``text/event-stream``, one event every ``--interval`` s for ``--minutes`` minutes, then ends
the chunked body; ``zeitwork load-balancer`` in front of it and ``zeitwork edge-proxy`` in
front of that, as processes. A client reads the stream through the edge's plain port and
checks that every event arrived, in order, and that the body ended properly. Every
inactivity timeout of both proxies (stream idle, first byte, keep-alive idle) is set to
``--idle`` s, well under the stream's length, so a deadline on the exchange's age would cut
it. Printed: events received and expected, the longest gap between two events, the
duration, and OK or FAILED (exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass
class Result:
    expected: int
    received: list[int] = field(default_factory=list)
    complete: bool = False  # the chunked body ended with its last chunk
    error: str | None = None
    max_gap: float = 0.0
    seconds: float = 0.0

    @property
    def whole(self) -> bool:
        return self.error is None and self.complete and self.received == list(range(self.expected))

    def line(self) -> str:
        verdict = "OK" if self.whole else "FAILED"
        return (
            f"long stream: {len(self.received)}/{self.expected} events in order="
            f"{self.received == list(range(len(self.received)))} complete={self.complete} "
            f"max_gap={self.max_gap:.3f}s duration={self.seconds:.1f}s "
            f"error={self.error} -> {verdict}"
        )


class _App:
    """``GET /events?n=&interval=``: n events, then the end of the body; anything else 200.
    ``close`` ends the streams still running (a client that gave up)."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()
        self.handlers: set[asyncio.Task[object]] = set()

    async def close(self) -> None:
        self.closing.set()
        await asyncio.gather(*self.handlers, return_exceptions=True)

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.handlers.add(task)
            task.add_done_callback(self.handlers.discard)
        await self._serve(reader, writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode("latin-1")
            parts = urlsplit(target)
            if parts.path != "/events":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                await writer.drain()
                return
            query = parse_qs(parts.query)
            count = int(query.get("n", ["10"])[0])
            interval = float(query.get("interval", ["1"])[0])
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
            )
            loop = asyncio.get_running_loop()
            start = loop.time()
            for k in range(count):
                # on a schedule, not after a sleep each: the stream lasts n * interval
                delay = max(0.0, start + k * interval - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.closing.wait(), delay)
                if self.closing.is_set():
                    return
                event = b"id: %d\nevent: tick\ndata: %d\n\n" % (k, k)
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()


async def read_stream(port: int, count: int, interval: float, host: str = "app.test") -> Result:
    """Read ``/events`` through ``port``: the events' ids, the gaps, whether it ended."""
    result = Result(expected=count)
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET /events?n=%d&interval=%s HTTP/1.1\r\nHost: %s\r\n"
            b"Accept: text/event-stream\r\nConnection: close\r\n\r\n"
            % (count, str(interval).encode(), host.encode())
        )
        wait = interval * 5 + 30  # a read that waits longer than this is a stall
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait)
        status = head.split(b"\r\n", 1)[0]
        if b" 200 " not in status + b" ":
            result.error = f"answered {status.decode('latin-1')}"
            return result
        if b"transfer-encoding: chunked" not in head.lower():
            result.error = "not chunked"
            return result
        buffer = b""
        last = loop.time()
        while True:
            size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), wait)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await asyncio.wait_for(reader.readuntil(b"\r\n"), wait)
                result.complete = True
                break
            buffer += await asyncio.wait_for(reader.readexactly(size + 2), wait)
            buffer = buffer[:-2]
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                fields = dict(line.split(b": ", 1) for line in event.split(b"\n") if b": " in line)
                now = loop.time()
                if result.received:
                    result.max_gap = max(result.max_gap, now - last)
                last = now
                result.received.append(int(fields[b"id"]))
    except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError, KeyError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.seconds = loop.time() - started
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return result


def _port_from(log: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"{log.name}: exited early:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"{log.name}: not listening after {timeout} s:\n{log.read_text()[-3000:]}")


def _spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run(
    *, seconds: float, interval: float, idle: float, workdir: Path, workers: int = 1
) -> Result:
    """App -> load balancer -> edge, then one stream of ``seconds / interval`` events."""
    handler = _App()
    app = await asyncio.start_server(handler, "127.0.0.1", 0)
    app_port = app.sockets[0].getsockname()[1]
    base = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(workdir),
        "HOST": "127.0.0.1",
        "PORT": "0",
    }
    timeout = str(idle)
    lb_env = base | {
        "LB_ADMIN_PORT": "0",
        "LB_WORKERS": str(workers),
        "LB_BACKENDS": f"127.0.0.1:{app_port}",
        "LB_TRUSTED_PROXIES": "127.0.0.1/32",
        "LB_STREAM_IDLE_TIMEOUT": timeout,
        "LB_FIRST_BYTE_TIMEOUT": timeout,
        "LB_IDLE_TIMEOUT": timeout,
        "ZEITWORK_DATA_DIR": str(workdir / "lb"),
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        lb_log = workdir / "lb.log"
        procs.append(_spawn([sys.executable, "-m", "zeitwork", "load-balancer"], lb_env, lb_log))
        lb_port = await asyncio.to_thread(
            _port_from, lb_log, r"lb.listening.*?\bport=(\d+)", procs[-1], 30
        )
        edge_env = base | {
            "EDGE_HTTPS_PORT": "0",
            "EDGE_ADMIN_PORT": "0",
            "EDGE_WORKERS": str(workers),
            "EDGE_DOMAINS": "app.test",
            "EDGE_HTTPS_REDIRECT": "false",
            "LOAD_BALANCER_URL": f"http://127.0.0.1:{lb_port}",
            "EDGE_STREAM_IDLE_TIMEOUT": timeout,
            "EDGE_FIRST_BYTE_TIMEOUT": timeout,
            "EDGE_IDLE_TIMEOUT": timeout,
            "ZEITWORK_DATA_DIR": str(workdir / "edge"),
        }
        edge_log = workdir / "edge.log"
        procs.append(_spawn([sys.executable, "-m", "zeitwork", "edge-proxy"], edge_env, edge_log))
        edge_port = await asyncio.to_thread(
            _port_from, edge_log, r"edge.started.*?\bhttp=(\d+)", procs[-1], 60
        )
        count = max(1, round(seconds / interval))
        return await read_stream(edge_port, count, interval)
    finally:
        for proc in reversed(procs):
            await asyncio.to_thread(_stop, proc)
        app.close()
        await handler.close()
        await app.wait_closed()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="stream length (10)")
    parser.add_argument("--interval", type=float, default=0.5, help="s between events (0.5)")
    parser.add_argument(
        "--idle", type=float, default=30.0, help="every proxy inactivity timeout, s (30)"
    )
    parser.add_argument("--workers", type=int, default=1, help="workers of each proxy (1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="zeitwork-long-stream-") as tmp:
        result = asyncio.run(
            run(
                seconds=args.minutes * 60,
                interval=args.interval,
                idle=args.idle,
                workdir=Path(tmp),
                workers=args.workers,
            )
        )
    print(
        f"through edge -> load balancer, {args.minutes:g} min, an event every "
        f"{args.interval:g} s, inactivity timeouts {args.idle:g} s"
    )
    print(result.line())
    return 0 if result.whole else 1


if __name__ == "__main__":
    sys.exit(main())
