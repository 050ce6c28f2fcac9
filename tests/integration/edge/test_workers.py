"""``zeitwork edge-proxy`` as a process: several workers share the ports; SIGTERM drains."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.edge.conftest import Conn, Upstream, client_context


def _wait_line(
    proc: subprocess.Popen[str], pattern: str, log: list[str], timeout: float = 20
) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError("edge exited early:\n" + "".join(log))
        log.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError("timed out waiting for " + pattern + "\n" + "".join(log))


def _edge_process(upstream: Upstream, tmp_path: Path, **extra: str) -> subprocess.Popen[str]:
    """``zeitwork edge-proxy`` on ports 0 with the internal CA for app.test, in front of
    ``upstream``; ``extra`` adds or replaces variables."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HOST": "127.0.0.1",
        "PORT": "0",
        "EDGE_HTTPS_PORT": "0",
        "EDGE_ADMIN_PORT": "0",
        "EDGE_DOMAINS": "app.test",
        "LOAD_BALANCER_URL": f"http://127.0.0.1:{upstream.port}",
        "ZEITWORK_DATA_DIR": str(tmp_path / "data"),
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "zeitwork", "edge-proxy"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


async def test_two_workers_serve_and_drain(upstream: Upstream, tmp_path: Path) -> None:
    proc = _edge_process(upstream, tmp_path, EDGE_WORKERS="2", EDGE_DRAIN_TIMEOUT="2")
    log: list[str] = []
    try:
        match = _wait_line(proc, r"edge.workers_started.*https=(\d+)", log)
        https = int(match.group(1))
        admin = 0
        for _ in range(2):
            started = _wait_line(proc, r"edge.started(.*)", log)
            found = re.search(r"admin=(\d+)", started.group(1))
            if found:
                admin = int(found.group(1))
        assert admin, "worker 0 serves the admin port"
        ctx = client_context(tmp_path / "data" / "edge" / "ca" / "ca.crt")
        # new connections land on either worker; all of them serve the certificate that
        # worker 0 issued (worker 1 picks it up from the shared store)
        deadline = time.monotonic() + 10
        ok = 0
        while ok < 8 and time.monotonic() < deadline:
            try:
                conn = await Conn.open(https, tls=ctx, sni="app.test")
            except OSError:
                continue
            response = await conn.request("/w", host="app.test")
            await conn.close()
            assert response.status == 200
            ok += 1
        assert ok == 8

        # worker 0's /metrics adds up every worker's counters
        async def served() -> float:
            reader, writer = await asyncio.open_connection("127.0.0.1", admin)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            body = await reader.read()
            writer.close()
            match = re.search(
                rb'zeitwork_edge_requests_total\{host="app.test",status="200"\} (\S+)', body
            )
            return float(match.group(1)) if match else 0.0

        async with asyncio.timeout(10):
            while await served() != 8:
                await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        _reap(proc)


@contextlib.contextmanager
def _proxy_protocol_edge(
    upstream: Upstream, tmp_path: Path, *, trusted: str
) -> Iterator[tuple[int, ssl.SSLContext]]:
    """The edge process with EDGE_PROXY_PROTOCOL on: (its HTTPS port, a client context);
    on leaving, SIGTERM must end it cleanly."""
    proc = _edge_process(
        upstream, tmp_path, EDGE_PROXY_PROTOCOL="true", EDGE_TRUSTED_PROXIES=trusted
    )
    log: list[str] = []
    try:
        https = int(_wait_line(proc, r"edge.started.*https=(\d+)", log).group(1))
        yield https, client_context(tmp_path / "data" / "edge" / "ca" / "ca.crt")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        _reap(proc)


async def test_direct_clients_on_a_proxy_protocol_listener_under_uvloop(
    upstream: Upstream, tmp_path: Path
) -> None:
    """uvloop starts reading right after ``connection_made`` (a pause there is undone), so the
    ClientHello of a peer that sends no PROXY header can arrive before TLS takes over; it must
    still reach the handshake. A client that sends its hello at once, many times over."""
    from tests.integration.edge.test_edge import _tls_over

    request = b"GET /direct HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
    with _proxy_protocol_edge(upstream, tmp_path, trusted="192.0.2.0/24") as (https, ctx):
        for _ in range(30):
            response = await asyncio.to_thread(
                _tls_over, https, b"", ctx, "app.test", request, split=False
            )
            assert response.startswith(b"HTTP/1.1 200"), response[:200]
            assert upstream.seen[-1][b"x-forwarded-for"] == b"127.0.0.1"


async def test_proxy_protocol_before_tls_under_uvloop(upstream: Upstream, tmp_path: Path) -> None:
    """The PROXY-then-TLS path as production runs it (the process uses uvloop; the in-process
    tests use asyncio's loop): start_tls and the protocol hand-over on uvloop's transports."""
    from tests.integration.edge.test_edge import _tls_over
    from zeitwork.edge.client_ip import PROXY_V2_SIGNATURE

    request = b"GET /uv HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
    v2 = PROXY_V2_SIGNATURE + bytes(
        [0x21, 0x11, 0, 12, 192, 0, 2, 77, 198, 51, 100, 1, 1, 0, 1, 187]
    )
    with _proxy_protocol_edge(upstream, tmp_path, trusted="127.0.0.1/32") as (https, ctx):
        for split in (False, True):
            response = await asyncio.to_thread(
                _tls_over, https, v2, ctx, "app.test", request, split=split
            )
            assert response.startswith(b"HTTP/1.1 200"), response[:200]
            assert upstream.seen[-1][b"x-forwarded-for"] == b"192.0.2.77"
        v1 = b"PROXY TCP4 192.0.2.78 198.51.100.1 40000 443\r\n"
        response = await asyncio.to_thread(
            _tls_over, https, v1, ctx, "app.test", request, split=True
        )
        assert response.startswith(b"HTTP/1.1 200")
        assert upstream.seen[-1][b"x-forwarded-for"] == b"192.0.2.78"


@pytest.mark.parametrize("proxy_protocol", ["false", "true"], ids=["plain", "proxy-protocol"])
async def test_https_caps_count_connections_in_their_handshake_under_uvloop(
    upstream: Upstream, tmp_path: Path, proxy_protocol: str
) -> None:
    """The pre-handshake admission subclasses the loop's own TLS protocol class (or, with
    the PROXY protocol, holds the place until start_tls is done): on uvloop in the process
    (the in-process test covers asyncio's loop)."""
    from tests.integration.edge.test_edge import check_https_caps_count_handshakes

    proc = _edge_process(
        upstream,
        tmp_path,
        EDGE_MAX_CONNECTIONS_PER_IP="3",
        EDGE_HANDSHAKE_TIMEOUT="30",
        EDGE_PROXY_PROTOCOL=proxy_protocol,
        EDGE_TRUSTED_PROXIES="192.0.2.0/24",
    )
    log: list[str] = []
    try:
        started = _wait_line(proc, r"edge.started.*", log).group(0)
        admin = int(re.search(r"admin=(\d+)", started).group(1))  # type: ignore[union-attr]
        https = int(re.search(r"https=(\d+)", started).group(1))  # type: ignore[union-attr]

        async def metrics() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", admin)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await reader.read()
            writer.close()
            return data.partition(b"\r\n\r\n")[2]

        ctx = client_context(tmp_path / "data" / "edge" / "ca" / "ca.crt")
        await check_https_caps_count_handshakes(https, ctx, "app.test", metrics)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        _reap(proc)


def _statuses(port: int, source: str, count: int) -> list[int]:
    """``count`` requests from ``source``, each on a new connection."""
    import socket

    out = []
    for _ in range(count):
        with socket.create_connection(
            ("127.0.0.1", port), timeout=5, source_address=(source, 0)
        ) as s:
            s.sendall(b"GET /r HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        out.append(int(data.split(b" ", 2)[1]))
    return out


@pytest.mark.parametrize("trusted", ["", "192.0.2.0/24"], ids=["steered", "behind-proxies"])
async def test_one_client_address_meets_one_worker(
    upstream: Upstream, tmp_path: Path, trusted: str
) -> None:
    """Two workers, a burst of 3 per address: with no trusted proxies every connection of an
    address reaches the same worker, so the address gets its 3 and no more (spread over two
    workers it would get up to 6); another address has its own 3. With trusted proxies in
    front the kernel's spreading is kept, and the limits combine per worker as documented."""
    proc = _edge_process(
        upstream,
        tmp_path,
        EDGE_WORKERS="2",
        RATE_LIMIT_RPS="0.001",
        RATE_LIMIT_BURST="3",
        EDGE_HTTPS_REDIRECT="false",
        EDGE_TRUSTED_PROXIES=trusted,
    )
    log: list[str] = []
    try:
        match = _wait_line(proc, r"edge.workers_started.*http=(\d+)", log)
        http = int(match.group(1))
        for _ in range(2):
            _wait_line(proc, r"edge.started", log)
        steering = "".join(line for line in log if "edge.steering" in line)
        if trusted:
            assert "connection" in steering and "client address" not in steering, steering
            return
        assert "client address" in steering, steering
        first = await asyncio.to_thread(_statuses, http, "127.0.0.1", 12)
        assert sorted(first) == [200] * 3 + [429] * 9, first
        second = await asyncio.to_thread(_statuses, http, "127.0.0.2", 5)
        assert sorted(second) == [200] * 3 + [429] * 2, second
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        _reap(proc)


async def test_a_worker_that_dies_is_respawned_and_the_edge_serves_on(
    upstream: Upstream, tmp_path: Path
) -> None:
    """The shared pre-fork policy (serving/prefork.py): a worker killed outright is started
    again on its own listeners (connections meanwhile wait in their queue), the other
    worker is left alone, and a SIGTERM afterwards still drains and exits 0."""
    proc = _edge_process(
        upstream,
        tmp_path,
        EDGE_WORKERS="2",
        EDGE_HTTPS_REDIRECT="false",
        EDGE_DRAIN_TIMEOUT="1",
        RATE_LIMIT_RPS="100000",
    )
    log: list[str] = []
    try:
        http = int(_wait_line(proc, r"edge.workers_started.*http=(\d+)", log).group(1))
        for _ in range(2):
            _wait_line(proc, r"edge.started", log)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2, children
        os.kill(int(children[0]), signal.SIGKILL)
        _wait_line(proc, r"workers.exited.*code=-9", log)
        _wait_line(proc, r"workers.respawning", log, timeout=30)
        _wait_line(proc, r"edge.started", log, timeout=30)
        now = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(now) == 2 and children[1] in now and children[0] not in now, (children, now)
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):  # whichever worker each meets
            assert await asyncio.to_thread(_statuses, http, source, 2) == [200, 200]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        _reap(proc)


def test_workers_end_with_a_supervisor_killed_outright(upstream: Upstream, tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) on the supervisor: its workers get SIGTERM from the kernel
    (PR_SET_PDEATHSIG), drain and exit, instead of serving on unsupervised."""
    proc = _edge_process(upstream, tmp_path, EDGE_WORKERS="2", EDGE_DRAIN_TIMEOUT="1")
    log: list[str] = []
    try:
        _wait_line(proc, r"edge.workers_started", log)
        for _ in range(2):
            _wait_line(proc, r"edge.started", log)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 2, children
        proc.kill()
        proc.wait(timeout=5)
        deadline = time.monotonic() + 15
        alive = children
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in children if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        assert not alive, f"workers {alive} outlived their supervisor"
    finally:
        _reap(proc)


def _zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True
