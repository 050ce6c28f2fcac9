#!/usr/bin/env bash
# Edge proxy vs HAProxy, both terminating TLS with the same certificate in front of the same
# nginx upstream (1 KiB), in the same run. The edge runs twice: "edge" from the release wheel
# (mypyc-compiled proxy core, built here by the package's own build) and "edge-py" (the
# pure-Python checkout); NO_COMPILED=1 skips the compiled one.
#   - keep-alive HTTPS: wrk, 64 connections, 1 thread, req/s, p50, p99
#   - HTTP/2 over TLS (ALPN h2; HAProxy with "alpn h2,http/1.1"): h2load, H2_CONNECTIONS (8)
#     connections with 10 and with 100 concurrent streams each, req/s and per CPU-second
#   - new TLS 1.3 connections per second (wrk, Connection: close, one request each), ECDSA
#     and RSA certificates, two ways: "full" handshakes (wrk made to forget its session by
#     benchmarks/edge/tls_sessions.c, preloaded) and "resumed" (wrk's own behaviour: it keeps
#     the session, so each connection resumes with a TLS 1.3 ticket). The preloaded library
#     also counts full and resumed handshakes, printed per run as a check. A minimal uvloop
#     TLS proxy (benchmarks/edge/minimal_tls_proxy.py) runs beside them as a reference for
#     what Python's TLS layer costs by itself (in the keep-alive runs too): "minimal-uvloop"
#     with uvloop's TLS layer, "minimal-bio" (new connections only) with memory BIOs as the
#     edge's own layer does it; the gap from minimal-bio to the edge is the edge's own work.
#     HAProxy runs twice too: "haproxy", TLS and two response headers (the peer the goals
#     are measured against), and "haproxy-policy", configured to do per request what the
#     edge does here (per-address request-rate and connection tracking in a stick table,
#     X-Forwarded-For/-Proto/-Host, a request id both ways, the edge's five response
#     headers), to show what that work costs HAProxy.
#   - TLS handshakes alone per second, ECDSA and RSA: four `openssl s_time -new` clients (a
#     full handshake, then close_notify; no HTTP request, no SNI: each server answers with its
#     only certificate), for HAProxy, the edge and minimal-bio: the handshake rate with none
#     of the HTTP work in it
#   - the HTTPS listener with EDGE_PROXY_PROTOCOL on (the compiled edge), for clients that
#     connect directly (no header): resumed handshakes per second and socket errors, beside
#     the plain TLS listener
#   - the rate limiter's cost per decision with a million distinct keys
# Every figure is given as throughput and per CPU-second of the server (user + system time
# from /proc): the machine has 2 cores, so wrk and the server each have about one. For the
# new-connection, handshake and PROXY-protocol lines the servers are pinned to the last CPU
# and the clients (and nginx) to the first (taskset), so that no server shares its core and
# its caches with the clients' handshake work: the per-CPU figures then repeat within about
# 2% from run to run on most lines, against up to 10% unpinned. The keep-alive lines are not
# pinned: at HAProxy's keep-alive rate wrk and nginx together need more than one core.
# Knobs: DURATION (s, default 10), CONNECTIONS (64), H2_CONNECTIONS (8), HANDSHAKE_SECONDS (5),
# NO_COMPILED, NO_PIN=1 (no pinning), H2_ONLY=1 (only the HTTP/2 lines: the edges and HAProxy
# are started as for the keep-alive lines, which are skipped, and the run ends after HTTP/2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ZW=${ZW:-.venv/bin/zeitwork}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-64}
H2_CONNECTIONS=${H2_CONNECTIONS:-8}
HANDSHAKE_SECONDS=${HANDSHAKE_SECONDS:-5}
NO_COMPILED=${NO_COMPILED:-}
H2_ONLY=${H2_ONLY:-}
for tool in wrk h2load haproxy nginx gcc openssl taskset; do
  command -v "$tool" >/dev/null || { echo "edge.sh: $tool is not installed" >&2; exit 2; }
done

# CPU pinning for the new-connection lines: servers on the last CPU, clients on the first
CLIENT_PIN=()
SERVER_CPU=
if [ -z "${NO_PIN:-}" ] && [ "$(nproc)" -ge 2 ]; then
  SERVER_CPU=$(($(nproc) - 1))
  CLIENT_PIN=(taskset -c 0)
fi
pin_servers() { # pid ... -> each process, all its threads, on the servers' CPU
  local pid
  [ -n "$SERVER_CPU" ] || return 0
  for pid in "$@"; do taskset -a -p -c "$SERVER_CPU" "$pid" >/dev/null; done
}

WORK=$(mktemp -d /tmp/zeitwork-bench-edge.XXXXXX)
# nginx's workers run as nobody when started as root: they must be able to read $WORK/www
# (mktemp's 0700 made every answer a 403)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_ports() { "$PY" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
read -r UP_PORT EDGE_HTTP EDGE_HTTPS EDGE_ADMIN HA_PORT PY_HTTP PY_HTTPS PY_ADMIN MIN_PORT KA_PORT \
  PP_HTTP PP_HTTPS PP_ADMIN BIO_PORT HP_PORT <<<"$(free_ports 15)"

wait_port() { # host port
  for _ in $(seq 100); do
    if "$PY" -c "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 0.2).close()" "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "edge.sh: nothing listens on $1" >&2
  tail -n 5 "$WORK"/*.log >&2 || true
  return 1
}

# --- certificates (ECDSA P-256 and RSA 2048), signed by a throwaway CA --------------------
"$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path
from zeitwork.edge.certificates.x509 import issue_leaf, self_signed_ca
work = Path(sys.argv[1])
ca, ca_key = self_signed_ca("bench CA")
(work / "ca.pem").write_text(ca)
for kind in ("ec", "rsa"):
    chain, key = issue_leaf(["bench.test"], ca_cert_pem=ca, ca_key_pem=ca_key, key_kind=kind)
    (work / f"{kind}.crt").write_text(chain)
    (work / f"{kind}.key").write_text(key)
    (work / f"{kind}.pem").write_text(chain + key)  # HAProxy wants both in one file
EOF

# --- wrk's TLS session switch and handshake counter ------------------------------------------
gcc -O2 -shared -fPIC -o "$WORK/tls_sessions.so" benchmarks/edge/tls_sessions.c -ldl ||
  { echo "edge.sh: building benchmarks/edge/tls_sessions.c needs gcc and libssl-dev" >&2; exit 2; }

# --- upstream: nginx serving 1 KiB ----------------------------------------------------------
mkdir -p "$WORK/www" "$WORK/nginx"
head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/www/index.html"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx;
  proxy_temp_path $WORK/nginx;
  fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx;
  scgi_temp_path $WORK/nginx;
  server { listen 127.0.0.1:$UP_PORT; root $WORK/www; }
}
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
wait_port "$UP_PORT"

# --- the compiled build: the release wheel, unpacked first on PYTHONPATH ------------------
if [ -z "$NO_COMPILED" ]; then
  echo "building the release wheel (mypyc-compiled proxy core, hatch_build.py) ..."
  ZEITWORK_REQUIRE_COMPILED=1 "$PY" -m build --wheel --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 ||
    { tail -n 20 "$WORK/build.log" >&2; echo "edge.sh: the compiled build failed (NO_COMPILED=1 skips it)" >&2; exit 1; }
  "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" \
    "$(ls "$WORK"/dist/zeitwork-*.whl)" "$WORK/site"
  PYTHONPATH="$WORK/site" "$PY" -c 'import sys, zeitwork.proxy as p; sys.exit(not p.core_compiled())' ||
    { echo "edge.sh: the wheel's proxy core is not compiled" >&2; exit 1; }
fi

start_edge() { # kind variant(c|py|pp) -> sets EDGE_PID (c), PY_PID (py) or PP_PID (pp: the
  # compiled build, if any, with EDGE_PROXY_PROTOCOL on; wrk is not a trusted proxy, so it
  # connects the way direct clients do, without a header)
  local http=$EDGE_HTTP https=$EDGE_HTTPS admin=$EDGE_ADMIN pypath="$WORK/site" pp=false
  if [ "$2" = py ]; then http=$PY_HTTP; https=$PY_HTTPS; admin=$PY_ADMIN; pypath=; fi
  if [ "$2" = pp ]; then http=$PP_HTTP; https=$PP_HTTPS; admin=$PP_ADMIN; pp=true; fi
  [ -n "$NO_COMPILED" ] && [ "$2" = pp ] && pypath=
  env -i PATH="$PATH" HOME="$HOME" PYTHONPATH="$pypath" HOST=127.0.0.1 PORT="$http" \
    EDGE_PROXY_PROTOCOL="$pp" EDGE_TRUSTED_PROXIES=192.0.2.0/24 \
    EDGE_HTTPS_PORT="$https" EDGE_ADMIN_PORT="$admin" LOAD_BALANCER_URL="http://127.0.0.1:$UP_PORT" \
    SSL_CERT_PATH="$WORK/$1.crt" SSL_KEY_PATH="$WORK/$1.key" RATE_LIMIT_RPS=1000000000 \
    EDGE_MAX_CONNECTIONS_PER_IP=100000 EDGE_WORKERS=1 LOG_LEVEL=warn \
    ZEITWORK_DATA_DIR="$WORK/data-$2" "$PY" -m zeitwork edge-proxy >"$WORK/edge-$1-$2.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  wait_port "$https"
  case $2 in py) PY_PID=$pid ;; pp) PP_PID=$pid ;; *) EDGE_PID=$pid ;; esac
}

start_haproxy() { # kind: starts "haproxy" (HA_PID) and "haproxy-policy" (HP_PID)
  local variant port policy
  for variant in plain policy; do
    port=$HA_PORT policy=""
    if [ "$variant" = policy ]; then
      port=$HP_PORT
      # what the edge does per request in this benchmark (rate limit and connection cap
      # set out of reach, as for the edge)
      policy='  stick-table type ipv6 size 1m expire 60s store conn_cur,http_req_rate(1s)
  tcp-request connection track-sc0 src
  tcp-request connection reject if { sc0_conn_cur gt 100000 }
  http-request deny deny_status 429 if { sc0_http_req_rate gt 1000000000 }
  unique-id-format %{+X}o%pid%rt%Ts
  unique-id-header X-Request-Id
  option forwardfor
  http-request set-header X-Forwarded-Proto https
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-response set-header X-Request-Id %[unique-id]
  http-response set-header X-Frame-Options SAMEORIGIN
  http-response set-header Referrer-Policy strict-origin-when-cross-origin
  http-response set-header Permissions-Policy "camera=(), microphone=(), geolocation=()"'
    fi
    cat >"$WORK/haproxy-$1-$variant.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  timeout connect 3s
  timeout client 75s
  timeout server 75s
  timeout http-request 10s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:$port ssl crt $WORK/$1.pem alpn h2,http/1.1
  http-response set-header Strict-Transport-Security "max-age=31536000"
  http-response set-header X-Content-Type-Options nosniff
$policy
  default_backend be
backend be
  http-reuse always
  server up 127.0.0.1:$UP_PORT
EOF
    haproxy -f "$WORK/haproxy-$1-$variant.cfg" -db >"$WORK/haproxy-$1-$variant.log" 2>&1 &
    PIDS+=($!)
    if [ "$variant" = policy ]; then HP_PID=$!; else HA_PID=$!; fi
    wait_port "$port"
  done
}

stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

cpu_seconds() { # pid -> user+system CPU seconds so far (the machine may be shared: CPU
  # seconds, unlike wall-clock throughput, do not depend on what else runs)
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"
}

wrk_run() { # label port pid -> prints a line; echoes "req/s req-per-cpu-second"
  local out before after
  before=$(cpu_seconds "$3")
  out=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -H "Host: bench.test" "https://127.0.0.1:$2/")
  after=$(cpu_seconds "$3")
  local rps p50 p99 total per_cpu
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  per_cpu=$("$PY" -c "import sys; n,a,b=map(float,sys.argv[1:]); print(f'{n/max(b-a,1e-9):.0f}')" "$total" "$before" "$after")
  printf '%-26s req/s=%-9s p50=%-8s p99=%-9s req/CPU-s=%s\n' "$1" "$rps" "$p50" "$p99" "$per_cpu" >&2
  echo "$rps $per_cpu"
}

handshakes() { # port pid full|resumed -> "connections/s per-server-CPU-second resumed% errors"
  # wrk with "Connection: close": every request is a new TCP connection and TLS handshake,
  # HTTP/1.1 so every proxy keeps its upstream pooled.
  local out before after resume=1
  [ "$3" = full ] && resume=0
  before=$(cpu_seconds "$2")
  out=$(ZEITWORK_TLS_RESUME=$resume LD_PRELOAD="$WORK/tls_sessions.so" \
    "${CLIENT_PIN[@]}" wrk -t1 -c16 -d"${HANDSHAKE_SECONDS}s" -H "Connection: close" -H "Host: bench.test" \
    "https://127.0.0.1:$1/" 2>"$WORK/wrk-tls.err")
  after=$(cpu_seconds "$2")
  local total rps counts
  total=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {printf "%.0f", $2}' <<<"$out")
  counts=$(grep -o 'full=[0-9]* resumed=[0-9]*' "$WORK/wrk-tls.err" | tail -1)
  errors=$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' <<<"$out")
  "$PY" -c "
import sys
rps, n, a, b, counts = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
full, resumed = (int(kv.split('=')[1]) for kv in counts.split())
print(rps, f'{n / max(b - a, 1e-9):.0f}', f'{100 * resumed / max(full + resumed, 1):.0f}', sys.argv[6] or 0)
" "$rps" "$total" "$before" "$after" "$counts" "${errors:-0}"
}

handshakes_only() { # port pid -> "handshakes/s per-server-CPU-second": four `openssl s_time`
  # clients, each connecting, completing a full handshake (-new: no session kept) and closing
  local before after i n
  before=$(cpu_seconds "$2")
  for i in 1 2 3 4; do
    "${CLIENT_PIN[@]}" openssl s_time -connect "127.0.0.1:$1" -new -time "$HANDSHAKE_SECONDS" >"$WORK/s_time-$i.out" 2>&1 &
  done
  wait  # the four clients: this runs in a subshell of its own, whose only children they are
  after=$(cpu_seconds "$2")
  n=$(awk '/connections in [0-9.]+ real seconds/ {s += $1} END {print s + 0}' "$WORK"/s_time-*.out)
  "$PY" -c "
import sys
n, a, b, t = (float(x) for x in sys.argv[1:5])
print(f'{n / t:.0f}', f'{n / max(b - a, 1e-9):.0f}')
" "$n" "$before" "$after" "$HANDSHAKE_SECONDS"
}

h2load_run() { # label port pid streams -> prints a line; echoes "req/s req-per-cpu-second"
  local out before after rps done_ ok per_cpu
  before=$(cpu_seconds "$3")
  out=$(h2load -c"$H2_CONNECTIONS" -m"$4" -D"$DURATION" -H ":authority: bench.test" "https://127.0.0.1:$2/" 2>&1)
  after=$(cpu_seconds "$3")
  grep -q "Application protocol: h2" <<<"$out" || { echo "edge.sh: $1 did not negotiate h2" >&2; exit 1; }
  rps=$(awk '/^finished in/ {print $4}' <<<"$out")
  done_=$(awk '/^requests:/ {print $8}' <<<"$out")  # succeeded
  ok=$(awk '/^status codes:/ {print $3}' <<<"$out")  # 2xx
  if ! [ "${ok:-0}" -gt 0 ] 2>/dev/null; then
    echo "edge.sh: $1 had no 2xx answer; h2load said:" >&2
    grep -E '^(requests|status codes):' <<<"$out" >&2
    echo "one request with curl --http2:" >&2
    curl -sk --http2 -i "https://127.0.0.1:$2/" | head -c 600 >&2 || true
  fi
  per_cpu=$("$PY" -c "import sys; n,a,b=map(float,sys.argv[1:]); print(f'{n/max(b-a,1e-9):.0f}')" "$ok" "$before" "$after")
  printf '%-34s req/s=%-9s succeeded=%-8s 2xx=%-8s req/CPU-s=%s\n' "$1" "$rps" "$done_" "$ok" "$per_cpu" >&2
  echo "$rps $per_cpu"
}

ratio() { "$PY" -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}' if b else 'n/a')" "$1" "$2"; }

VARIANTS=(py)
[ -z "$NO_COMPILED" ] && VARIANTS=(c py)
label() { [ "$1" = c ] && echo "edge" || echo "edge-py"; }
pid_of() { [ "$1" = c ] && echo "$EDGE_PID" || echo "$PY_PID"; }
port_of() { [ "$1" = c ] && echo "$EDGE_HTTPS" || echo "$PY_HTTPS"; }
best() { printf '%s\n' "$@" | sort -g | tail -1; }

for v in "${VARIANTS[@]}"; do start_edge ec "$v"; done
start_haproxy ec
if [ -z "$H2_ONLY" ]; then
echo "== keep-alive HTTPS (ECDSA), wrk -t1 -c$CONNECTIONS -d${DURATION}s, 1 KiB from nginx =="
"$PY" benchmarks/edge/minimal_tls_proxy.py "$KA_PORT" "$WORK/ec.crt" "$WORK/ec.key" "$UP_PORT" \
  keep-alive >"$WORK/minimal-ka.log" 2>&1 &
KA_PID=$!
PIDS+=("$KA_PID")
wait_port "$KA_PORT"
declare -A rps_of cpu_of
for round in 1 2 3; do
  for v in "${VARIANTS[@]}"; do
    read -r r c <<<"$(wrk_run "zeitwork $(label "$v") (round $round)" "$(port_of "$v")" "$(pid_of "$v")")"
    rps_of[$v]+="$r "; cpu_of[$v]+="$c "
  done
  read -r r c <<<"$(wrk_run "minimal-uvloop (round $round)" "$KA_PORT" "$KA_PID")"
  rps_of[min]+="$r "; cpu_of[min]+="$c "
  read -r r c <<<"$(wrk_run "haproxy (round $round)" "$HA_PORT" "$HA_PID")"
  rps_of[ha]+="$r "; cpu_of[ha]+="$c "
  read -r r c <<<"$(wrk_run "haproxy-policy (round $round)" "$HP_PORT" "$HP_PID")"
  rps_of[hp]+="$r "; cpu_of[hp]+="$c "
done
stop_pid "$KA_PID"
# shellcheck disable=SC2086  # word lists on purpose
ha_rps=$(best ${rps_of[ha]})
# shellcheck disable=SC2086
ha_cpu=$(best ${cpu_of[ha]})
for v in "${VARIANTS[@]}" min; do
  name=minimal-uvloop
  [ "$v" != min ] && name=$(label "$v")
  # shellcheck disable=SC2086
  r=$(best ${rps_of[$v]})
  # shellcheck disable=SC2086
  c=$(best ${cpu_of[$v]})
  echo "keep-alive best of 3: $name $r req/s, haproxy $ha_rps req/s, ratio $(ratio "$r" "$ha_rps"); per CPU-second $c vs $ha_cpu, ratio $(ratio "$c" "$ha_cpu")"
done
# shellcheck disable=SC2086
hp_rps=$(best ${rps_of[hp]})
# shellcheck disable=SC2086
hp_cpu=$(best ${cpu_of[hp]})
# shellcheck disable=SC2086
echo "keep-alive best of 3: haproxy-policy $hp_rps req/s ($hp_cpu per CPU-s), $(ratio "$hp_cpu" "$ha_cpu") of haproxy per CPU-s; $(label "${VARIANTS[0]}") / haproxy-policy: $(ratio "$(best ${rps_of[${VARIANTS[0]}]})" "$hp_rps"), per CPU-s $(ratio "$(best ${cpu_of[${VARIANTS[0]}]})" "$hp_cpu")"

fi  # H2_ONLY

echo "== HTTP/2 over TLS (ECDSA), h2load -c$H2_CONNECTIONS -D${DURATION}s, 10 and 100 streams per connection; best of 2 =="
for streams in 10 100; do
  declare -A h2_rps=() h2_cpu=()
  for round in 1 2; do
    for v in "${VARIANTS[@]}"; do
      read -r r c <<<"$(h2load_run "zeitwork $(label "$v") -m$streams (round $round)" "$(port_of "$v")" "$(pid_of "$v")" "$streams")"
      h2_rps[$v]+="$r "; h2_cpu[$v]+="$c "
    done
    read -r r c <<<"$(h2load_run "haproxy -m$streams (round $round)" "$HA_PORT" "$HA_PID" "$streams")"
    h2_rps[ha]+="$r "; h2_cpu[ha]+="$c "
  done
  # shellcheck disable=SC2086
  ha_r=$(best ${h2_rps[ha]})
  # shellcheck disable=SC2086
  ha_c=$(best ${h2_cpu[ha]})
  line="h2 -m$streams: haproxy $ha_r req/s ($ha_c per CPU-s)"
  for v in "${VARIANTS[@]}"; do
    # shellcheck disable=SC2086
    r=$(best ${h2_rps[$v]})
    # shellcheck disable=SC2086
    c=$(best ${h2_cpu[$v]})
    line+=" | $(label "$v") $r req/s ratio $(ratio "$r" "$ha_r"), per CPU-s $c ratio $(ratio "$c" "$ha_c")"
  done
  echo "$line"
done

[ -n "$H2_ONLY" ] && exit 0

echo "== new TLS 1.3 connections per second (wrk -c16, Connection: close, ${HANDSHAKE_SECONDS}s each; best of 2) =="
if [ -n "$SERVER_CPU" ]; then
  for pid in "$NGINX_PID" $(pgrep -P "$NGINX_PID"); do taskset -a -p -c 0 "$pid" >/dev/null; done
  echo "   pinned: servers on CPU $SERVER_CPU, clients and nginx on CPU 0 (NO_PIN=1: not pinned)"
fi
echo "   full = wrk forgets its session (a full handshake each); resumed = wrk's default (tickets)"
start_minimal() { # kind
  "$PY" benchmarks/edge/minimal_tls_proxy.py "$MIN_PORT" "$WORK/$1.crt" "$WORK/$1.key" "$UP_PORT" \
    >"$WORK/minimal-$1.log" 2>&1 &
  MIN_PID=$!
  PIDS+=("$MIN_PID")
  "$PY" benchmarks/edge/minimal_tls_proxy.py "$BIO_PORT" "$WORK/$1.crt" "$WORK/$1.key" "$UP_PORT" \
    bio >"$WORK/minimal-bio-$1.log" 2>&1 &
  BIO_PID=$!
  PIDS+=("$BIO_PID")
  wait_port "$MIN_PORT"
  wait_port "$BIO_PORT"
}
min_label() { [ "$1" = min ] && echo "minimal-uvloop" || echo "minimal-bio"; }
for kind in ec rsa; do
  if [ "$kind" = rsa ]; then
    for v in "${VARIANTS[@]}"; do stop_pid "$(pid_of "$v")"; done
    stop_pid "$HA_PID"
    stop_pid "$HP_PID"
    stop_pid "$MIN_PID"
    stop_pid "$BIO_PID"
    for v in "${VARIANTS[@]}"; do start_edge rsa "$v"; done
    start_haproxy rsa
  fi
  start_minimal "$kind"
  pin_servers "$HA_PID" "$HP_PID" "$MIN_PID" "$BIO_PID" \
    "$(pid_of "${VARIANTS[0]}")" "$(pid_of "${VARIANTS[-1]}")"
  for mode in full resumed; do
    declare -A h_rps=() h_cpu=() h_reused=()
    for round in 1 2; do
      for who in ha hp "${VARIANTS[@]}" min bio; do
        case $who in
          ha) port=$HA_PORT pid=$HA_PID ;;
          hp) port=$HP_PORT pid=$HP_PID ;;
          min) port=$MIN_PORT pid=$MIN_PID ;;
          bio) port=$BIO_PORT pid=$BIO_PID ;;
          *) port=$(port_of "$who") pid=$(pid_of "$who") ;;
        esac
        read -r r c u _ <<<"$(handshakes "$port" "$pid" "$mode")"
        h_rps[$who]+="$r "; h_cpu[$who]+="$c "; h_reused[$who]="$u"
      done
    done
    # shellcheck disable=SC2086
    ha_r=$(best ${h_rps[ha]})
    # shellcheck disable=SC2086
    ha_c=$(best ${h_cpu[ha]})
    line="$kind $mode: haproxy $ha_r/s ($ha_c per CPU-s, ${h_reused[ha]}% resumed)"
    for who in "${VARIANTS[@]}" min bio; do
      case $who in
        min | bio) name=$(min_label "$who") ;;
        *) name=$(label "$who") ;;
      esac
      # shellcheck disable=SC2086
      r=$(best ${h_rps[$who]})
      # shellcheck disable=SC2086
      c=$(best ${h_cpu[$who]})
      line+=" | $name $r/s ratio $(ratio "$r" "$ha_r"), per CPU-s $c ratio $(ratio "$c" "$ha_c") (${h_reused[$who]}% resumed)"
    done
    echo "$line"
    # shellcheck disable=SC2086
    hp_r=$(best ${h_rps[hp]})
    # shellcheck disable=SC2086
    hp_c=$(best ${h_cpu[hp]})
    # shellcheck disable=SC2086
    echo "   haproxy-policy $hp_r/s ($hp_c per CPU-s, $(ratio "$hp_c" "$ha_c") of haproxy); $(label "${VARIANTS[0]}") / haproxy-policy $(ratio "$(best ${h_rps[${VARIANTS[0]}]})" "$hp_r"), per CPU-s $(ratio "$(best ${h_cpu[${VARIANTS[0]}]})" "$hp_c")"
  done
  # handshakes alone (no HTTP request): HAProxy, the first edge variant, minimal-bio
  declare -A o_rps=() o_cpu=()
  for round in 1 2; do
    for who in ha "${VARIANTS[0]}" bio; do
      case $who in
        ha) port=$HA_PORT pid=$HA_PID ;;
        bio) port=$BIO_PORT pid=$BIO_PID ;;
        *) port=$(port_of "$who") pid=$(pid_of "$who") ;;
      esac
      read -r r c <<<"$(handshakes_only "$port" "$pid")"
      o_rps[$who]+="$r "; o_cpu[$who]+="$c "
    done
  done
  # shellcheck disable=SC2086
  ha_r=$(best ${o_rps[ha]})
  # shellcheck disable=SC2086
  ha_c=$(best ${o_cpu[ha]})
  line="$kind handshakes only (4 x openssl s_time -new): haproxy $ha_r/s ($ha_c per CPU-s)"
  for who in "${VARIANTS[0]}" bio; do
    name=minimal-bio
    [ "$who" != bio ] && name=$(label "$who")
    # shellcheck disable=SC2086
    r=$(best ${o_rps[$who]})
    # shellcheck disable=SC2086
    c=$(best ${o_cpu[$who]})
    line+=" | $name $r/s ratio $(ratio "$r" "$ha_r"), per CPU-s $c ratio $(ratio "$c" "$ha_c")"
  done
  echo "$line"
done

echo "== HTTPS listener with EDGE_PROXY_PROTOCOL on (direct clients, no header), ECDSA, resumed; best of 2 =="
for v in "${VARIANTS[@]}"; do stop_pid "$(pid_of "$v")"; done
stop_pid "$HA_PID"
stop_pid "$HP_PID"
stop_pid "$MIN_PID"
stop_pid "$BIO_PID"
plain=${VARIANTS[0]}
start_edge ec "$plain"
start_edge ec pp
pin_servers "$(pid_of "$plain")" "$PP_PID"
declare -A pp_rps=() pp_cpu=() pp_err=()
for round in 1 2; do
  for who in plain pp; do
    if [ "$who" = pp ]; then port=$PP_HTTPS pid=$PP_PID; else port=$(port_of "$plain") pid=$(pid_of "$plain"); fi
    read -r r c _ e <<<"$(handshakes "$port" "$pid" resumed)"
    pp_rps[$who]+="$r "; pp_cpu[$who]+="$c "; pp_err[$who]=$(( ${pp_err[$who]:-0} + e ))
  done
done
# shellcheck disable=SC2086
echo "$(label "$plain") with the PROXY-protocol listener: $(best ${pp_rps[pp]})/s ($(best ${pp_cpu[pp]}) per CPU-s, ${pp_err[pp]} socket errors) vs the plain TLS listener $(best ${pp_rps[plain]})/s ($(best ${pp_cpu[plain]}) per CPU-s, ${pp_err[plain]} socket errors), ratio $(ratio "$(best ${pp_rps[pp]})" "$(best ${pp_rps[plain]})")"

echo "== rate limiter =="
if [ -z "$NO_COMPILED" ]; then
  echo "compiled (release wheel):"
  PYTHONPATH="$WORK/site" "$PY" benchmarks/edge/limiter.py
  echo "pure Python:"
fi
"$PY" benchmarks/edge/limiter.py
