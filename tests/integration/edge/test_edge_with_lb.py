"""The edge in front of the real load balancer (``zeitwork load-balancer`` as a process)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.edge.conftest import Conn, EdgeFactory, Upstream, admin_get, client_context


@pytest.fixture
def load_balancer(
    upstream: Upstream, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "HOST": "127.0.0.1",
        "PORT": "0",
        "LB_ADMIN_PORT": "0",
        "LB_WORKERS": "1",
        "LB_TRUSTED_PROXIES": "127.0.0.1/32",  # the edge: its forwarding headers are kept
        "LB_BACKENDS": f"127.0.0.1:{upstream.port}",
        "ZEITWORK_DATA_DIR": str(tmp_path / "lb"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "zeitwork", "load-balancer"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    port = 0
    deadline = time.monotonic() + 20
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"lb.listening.* port=(\d+)", line)
        if match:
            port = int(match.group(1))
            break
    if not port:
        proc.kill()
        proc.wait()
        raise AssertionError("load balancer did not start:\n" + "".join(lines))
    try:
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


async def test_https_through_edge_and_load_balancer(
    make_edge: EdgeFactory,
    load_balancer: tuple[subprocess.Popen[str], int],
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    proc, lb_port = load_balancer
    edge = await make_edge(LOAD_BALANCER_URL=f"http://127.0.0.1:{lb_port}", EDGE_DOMAINS="app.test")
    ctx = client_context(tmp_path / "data" / "edge" / "ca" / "ca.crt")
    conn = await Conn.open(edge.ports["https"], tls=ctx, sni="app.test")
    for i in range(3):  # keep-alive through both hops
        response = await conn.request(f"/through/{i}", host="app.test")
        assert response.status == 200 and response.body == f"ok /through/{i}".encode()
        assert response.header(b"strict-transport-security") is not None
    await conn.close()
    assert upstream.seen[-1][b"x-forwarded-proto"] == b"https"
    assert upstream.seen[-1][b"x-forwarded-host"] == b"app.test"
    status, _ = await admin_get(edge, "/health")
    assert status == 200
    proc.terminate()
    proc.wait(timeout=10)
    status, body = await admin_get(edge, "/health")
    assert status == 503 and b"degraded" in body


async def test_the_app_sees_the_real_client_and_scheme_through_both_hops(
    make_edge: EdgeFactory,
    load_balancer: tuple[subprocess.Popen[str], int],
    upstream: Upstream,
    tmp_path: Path,
) -> None:
    # a client on 127.0.0.2 that forges every forwarding header: the edge drops them and
    # names the socket peer; the load balancer trusts the edge (127.0.0.1) and keeps its
    _, lb_port = load_balancer
    edge = await make_edge(LOAD_BALANCER_URL=f"http://127.0.0.1:{lb_port}", EDGE_DOMAINS="app.test")
    ctx = client_context(tmp_path / "data" / "edge" / "ca" / "ca.crt")
    conn = await Conn.open(edge.ports["https"], tls=ctx, sni="app.test", local="127.0.0.2")
    client_port = conn.writer.get_extra_info("sockname")[1]
    forged = {
        "X-Forwarded-For": "198.51.100.66",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": "evil.example",
        "X-Real-IP": "198.51.100.66",
        "Forwarded": "for=198.51.100.66;proto=http",
    }
    response = await conn.request("/who", host="app.test", headers=forged)
    await conn.close()
    assert response.status == 200
    seen = upstream.seen[-1]
    assert seen[b"x-forwarded-for"] == b"127.0.0.2, 127.0.0.1"  # the client, then the edge
    assert seen[b"x-real-ip"] == b"127.0.0.2"
    assert seen[b"x-forwarded-proto"] == b"https"
    assert seen[b"x-forwarded-host"] == b"app.test"
    # RFC 7239: the edge's element (the client, over https), then the balancer's (the edge)
    expected = (
        rb'for="127\.0\.0\.2:%d";host="app\.test";proto=https, '
        rb'for="127\.0\.0\.1:\d+";host="app\.test";proto=http' % client_port
    )
    assert re.fullmatch(expected, seen[b"forwarded"]), seen[b"forwarded"]
    assert b"198.51.100.66" not in b"".join(seen.values())
