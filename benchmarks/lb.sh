#!/usr/bin/env bash
# Load balancer benchmark: wrk on loopback through the zeitwork load balancer, HAProxy and
# (if installed) Caddy, to the same two nginx backends serving 1 KiB; alternating rounds.
# Usage: benchmarks/lb.sh [--rounds 3] [--duration 10] [--connections 64] [--workers N]
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in wrk nginx haproxy; do
    command -v "$tool" >/dev/null || { echo "benchmarks/lb.sh: $tool is not installed" >&2; exit 2; }
done
exec .venv/bin/python benchmarks/lb/run.py "$@"
