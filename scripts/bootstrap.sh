#!/usr/bin/env bash
# Prepare this checkout for development and tests: system packages (when run as root and
# missing), a virtualenv in .venv, and the package with its dev extras (editable).
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  runc crun umoci buildah skopeo        # OCI runtime driver and image tooling
  mmdebstrap                            # Debian base images for builds without a Dockerfile
  docker-registry apache2-utils         # a real OCI registry (distribution 2.8) for the image tests; htpasswd -B
  iproute2 nftables e2fsprogs           # node networking, ext4 rootfs (mkfs.ext4 -d, debugfs)
  pebble                                # a real ACME server for the edge tests
  haproxy nginx-light wrk caddy         # benchmark peers and load generator
  nghttp2-client                        # h2load and nghttp: the edge's HTTP/2 tests and benchmark
  gcc libssl-dev                        # benchmarks/edge/tls_sessions.c (preloaded into wrk)
  openssl                               # openssl s_time: the edge benchmark's handshake-only clients
  systemd                               # systemd-analyze verify for the unit files
  linux-libc-dev                        # syscall numbers (asm/unistd_64.h) for the units' seccomp test
  chromium                              # the web console's browser test (Playwright drives it)
  curl ca-certificates procps
  busybox-static                        # the tiny runnable test image (tests/images.py)
  websocketd                            # the WebSocket test app (tests/ws_image.py)
  xfsprogs                              # reflink-capable XFS for microVM rootfs views (tests: loop mount)
)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts these services on install; the project runs its own.
    for svc in nginx haproxy caddy docker-registry; do
      (systemctl stop "$svc" || service "$svc" stop) >/dev/null 2>&1 || true
    done
  fi
elif [ "$(id -u)" != 0 ]; then
  echo "bootstrap: not root; skipping system packages (${APT_PACKAGES[*]})" >&2
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.zeitwork-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  touch "$stamp"
fi
