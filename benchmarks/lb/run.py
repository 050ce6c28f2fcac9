"""Orchestrates the load balancer benchmark (see benchmarks/lb.sh).

Every proxy runs as our own foreground child with its config in a temporary directory:
two nginx backends (1 KiB body, keep-alive), then for each round and each proxy one wrk run
(64 keep-alive connections by default). CPU seconds are read from /proc for the proxy's
whole process tree (utime + stime), before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def tree(pid: int) -> list[int]:
    out = [pid]
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for k in kids:
        out.extend(tree(int(k)))
    return out


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu: float
    requests: int

    @property
    def per_cpu(self) -> float:
        return self.requests / self.cpu if self.cpu else 0.0


@dataclass
class Proxy:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    results: list[Result] = field(default_factory=list)


def ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(
    port: int, *, duration: int, connections: int, threads: int
) -> tuple[float, float, float, int]:
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    # the "Latency Distribution" lines look like "     50%    1.23ms" (anchored: other lines
    # end in percentages too)
    p50 = ms(re.search(r"^\s+50%[ \t]+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = ms(re.search(r"^\s+99%[ \t]+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  warning: wrk reported errors on port {port}:\n{out}", file=sys.stderr)
    if p50 != p50:  # NaN: show what wrk printed
        print(out, file=sys.stderr)
    return rps, p50, p99, total


def nginx_conf(tmp: Path, ports: list[int]) -> Path:
    (tmp / "www").mkdir()
    (tmp / "www" / "index.html").write_bytes(b"z" * 1024)
    (tmp / "www").chmod(0o755)
    (tmp / "www" / "index.html").chmod(0o644)
    servers = "\n".join(
        f"  server {{ listen 127.0.0.1:{p}; root {tmp}/www;"
        " location = /health { return 200 ok; } }"
        for p in ports
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
{servers}
}}
"""
    )
    return conf


def haproxy_conf(tmp: Path, port: int, backends: list[int], workers: int) -> Path:
    servers = "\n".join(
        f"  server s{i} 127.0.0.1:{p} check inter 2s" for i, p in enumerate(backends)
    )
    conf = tmp / "haproxy.cfg"
    conf.write_text(
        f"""global
  nbthread {workers}
  maxconn 4000
defaults
  mode http
  timeout connect 3s
  timeout client 75s
  timeout server 300s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  balance roundrobin
  option httpchk GET /health
{servers}
"""
    )
    return conf


def caddy_conf(tmp: Path, port: int, backends: list[int]) -> Path:
    ups = " ".join(f"127.0.0.1:{p}" for p in backends)
    conf = tmp / "Caddyfile"
    conf.write_text(
        f"""{{
  admin off
  auto_https off
}}
:{port} {{
  bind 127.0.0.1
  reverse_proxy {ups} {{
    lb_policy round_robin
    health_uri /health
    health_interval 2s
  }}
}}
"""
    )
    return conf


def build_compiled(tmp: Path) -> Path:
    """Build the wheel with the mypyc hook (the package's own build) and unpack it."""
    print("building the mypyc-compiled wheel (hatch_build.py) ...", flush=True)
    dist = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        env=dict(os.environ, HATCH_BUILD_HOOK_ENABLE_CUSTOM="true"),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wheel = next(dist.glob("zeitwork-*.whl"))
    site = tmp / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
    )
    compiled = list((site / "zeitwork" / "proxy").glob("server*.so"))
    if not compiled:
        raise SystemExit("the wheel has no compiled proxy core")
    return site


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--no-caddy", action="store_true")
    parser.add_argument(
        "--no-compiled",
        action="store_true",
        help="skip the mypyc-compiled build (measure the pure-Python balancer only)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="zeitwork-bench-lb-"))
    tmp.chmod(0o755)  # nginx workers run unprivileged and must read the 1 KiB file
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        argv: list[str], env: dict[str, str] | None = None, log: str = "out"
    ) -> subprocess.Popen[bytes]:
        with (tmp / f"{log}.log").open("wb") as out:
            p = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        backends = [free_port(), free_port()]
        start(
            ["nginx", "-c", str(nginx_conf(tmp, backends)), "-p", str(tmp), "-g", "daemon off;"],
            log="nginx",
        )
        for p in backends:
            wait_port(p)

        proxies: list[Proxy] = []
        zw_port, admin_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LB_")}
        env.update(
            {
                "PORT": str(zw_port),
                "HOST": "127.0.0.1",
                "LB_ADMIN_PORT": str(admin_port),
                "LB_WORKERS": str(args.workers),
                "LB_BACKENDS": ",".join(f"127.0.0.1:{p}" for p in backends),
                "LB_HEALTH_PATH": "/health",  # HTTP checks, as HAProxy's and Caddy's
                "LOG_LEVEL": "warn",
                "ZEITWORK_DATA_DIR": str(tmp),
            }
        )
        if not args.no_compiled:
            site = build_compiled(tmp)
            cenv = dict(env, PYTHONPATH=str(site))
            zc = start([sys.executable, "-m", "zeitwork", "load-balancer"], env=cenv, log="zwc")
            proxies.append(Proxy("zeitwork", zw_port, zc))
            zw_port = free_port()
            env["PORT"] = str(zw_port)
            env["LB_ADMIN_PORT"] = str(free_port())
        zw = start([sys.executable, "-m", "zeitwork", "load-balancer"], env=env, log="zeitwork")
        proxies.append(Proxy("zeitwork-py" if not args.no_compiled else "zeitwork", zw_port, zw))
        hp_port = free_port()
        hp = start(
            ["haproxy", "-db", "-f", str(haproxy_conf(tmp, hp_port, backends, args.workers))],
            log="haproxy",
        )
        proxies.append(Proxy("haproxy", hp_port, hp))
        if not args.no_caddy and shutil.which("caddy"):
            cd_port = free_port()
            cenv = dict(
                os.environ,
                GOMAXPROCS=str(args.workers),
                XDG_DATA_HOME=str(tmp),
                XDG_CONFIG_HOME=str(tmp),
            )
            cd = start(
                [
                    "caddy",
                    "run",
                    "--adapter",
                    "caddyfile",
                    "--config",
                    str(caddy_conf(tmp, cd_port, backends)),
                ],
                env=cenv,
                log="caddy",
            )
            proxies.append(Proxy("caddy", cd_port, cd))
        for p in proxies:
            wait_port(p.port)
        # warm up every path (pools, health checks)
        for p in proxies:
            run_wrk(p.port, duration=2, connections=args.connections, threads=args.wrk_threads)

        # idle-connection latency: one connection, direct to nginx vs through each proxy
        idle = {"nginx (direct)": run_wrk(backends[0], duration=3, connections=1, threads=1)[1]}
        for p in proxies:
            idle[p.name] = run_wrk(p.port, duration=3, connections=1, threads=1)[1]

        for r in range(args.rounds):
            for p in proxies:
                before = cpu_seconds(p.proc.pid)
                rps, p50, p99, total = run_wrk(
                    p.port,
                    duration=args.duration,
                    connections=args.connections,
                    threads=args.wrk_threads,
                )
                cpu = cpu_seconds(p.proc.pid) - before
                p.results.append(Result(rps, p50, p99, cpu, total))
                print(
                    f"round {r + 1} {p.name:9s} {rps:10.0f} req/s  p50 {p50:6.2f} ms"
                    f"  p99 {p99:6.2f} ms"
                    f"  cpu {cpu:6.2f} s  {total / cpu if cpu else 0:9.0f} req/cpu-s",
                    flush=True,
                )

        print()
        print(
            f"{args.workers} worker(s)/thread(s) per proxy, {args.connections} connections, "
            f"{args.rounds} x {args.duration} s, wrk -t{args.wrk_threads},"
            " 1 KiB from 2 nginx backends"
        )
        header = (
            f"{'proxy':10s} {'req/s':>9s} {'p50 ms':>7s} {'p99 ms':>7s} {'cpu s':>7s}"
            f" {'req/cpu-s':>10s} {'x req/s':>8s} {'x req/cpu':>9s}"
        )
        print(header)
        base = next(p for p in proxies if p.name == "haproxy")
        b_rps = statistics.median(x.rps for x in base.results)
        b_eff = statistics.median(x.per_cpu for x in base.results)
        summary = {}
        for p in proxies:
            rps = statistics.median(x.rps for x in p.results)
            p50 = statistics.median(x.p50_ms for x in p.results)
            p99 = statistics.median(x.p99_ms for x in p.results)
            cpu = statistics.median(x.cpu for x in p.results)
            eff = statistics.median(x.per_cpu for x in p.results)
            summary[p.name] = {
                "rps": rps,
                "p50_ms": p50,
                "p99_ms": p99,
                "cpu_s": cpu,
                "req_per_cpu_s": eff,
                "rps_ratio_to_haproxy": rps / b_rps,
                "efficiency_ratio_to_haproxy": eff / b_eff,
                "idle_p50_ms": idle[p.name],
            }
            print(
                f"{p.name:10s} {rps:9.0f} {p50:7.2f} {p99:7.2f} {cpu:7.2f} {eff:10.0f}"
                f" {rps / b_rps:8.2f} {eff / b_eff:9.2f}"
            )
        print()
        print(
            "idle connection p50 (1 connection):",
            ", ".join(f"{k} {v:.3f} ms" for k, v in idle.items()),
        )
        print(
            "added by zeitwork on an idle connection:"
            f" {idle['zeitwork'] - idle['nginx (direct)']:.3f} ms p50"
        )
        if args.json:
            args.json.write_text(json.dumps({"summary": summary, "idle_p50_ms": idle}, indent=2))
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
