#!/usr/bin/env bash
# Install Zeitwork on this host for production (`sudo make install`):
#   - system user and group `zeitwork` (no login shell, home /var/lib/zeitwork)
#   - a virtualenv in /opt/zeitwork with the zeitwork package from this checkout
#     (or from the wheel named by ZEITWORK_WHEEL), command /opt/zeitwork/bin/zeitwork, and
#     /opt/zeitwork/bin/zeitwork-env to run admin commands with a service's env file
#   - /etc/zeitwork/{operator,node-agent,load-balancer,edge-proxy,builder}.env from deployments/config/
#   - /var/lib/zeitwork (one data directory per service below it) and /var/log/zeitwork
#   - systemd units zeitwork-*.service from deployments/systemd/ in /etc/systemd/system
# It enables and starts nothing: pick the services this host runs, edit their env files, then
# `systemctl enable --now zeitwork-<service>`. See docs/production.md.
#
# Safe to run again, and to upgrade: it reinstalls the package and the units, and treats the
# env files like configuration files: one the admin never edited is updated to the new
# template; an edited one is kept as it is and the new template is written beside it as
# <name>.env.new (and a note printed).
#
# Where things go (for packaging and for tests that install into a temporary root):
#   ZEITWORK_PREFIX       /opt/zeitwork          the virtualenv (bin/zeitwork)
#   ZEITWORK_ETC          /etc/zeitwork          env files
#   ZEITWORK_VAR          /var/lib/zeitwork      data (home of the zeitwork user)
#   ZEITWORK_LOG          /var/log/zeitwork      log directory
#   ZEITWORK_SYSTEMD_DIR  /etc/systemd/system    unit files
#   ZEITWORK_USER         zeitwork               system user and group the services run as
#   ZEITWORK_PYTHON       /usr/bin/python3       interpreter for the virtualenv (>= 3.11; not
#                                                under /root or /home, which the units hide)
#   ZEITWORK_WHEEL        (unset)                install this wheel instead of the checkout
#   ZEITWORK_PIP_ARGS     (unset)                extra pip arguments, e.g. for an offline
#                                                mirror: "--no-index --find-links /srv/wheels"
#   ZEITWORK_PURE_PYTHON  (unset)                1: do not compile the proxy core with mypyc
#                                                (by default the wheel built from the checkout
#                                                compiles it; that needs a C compiler,
#                                                Python headers and mypy from the package
#                                                index (or ZEITWORK_PIP_ARGS' mirror), else
#                                                it falls back to pure Python and says so)
# Installed units and env files name the paths chosen here.
set -euo pipefail
# Files under /opt/zeitwork must be readable by the zeitwork user whatever root's umask is.
umask 022

SRC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${ZEITWORK_PREFIX:-/opt/zeitwork}"
ETC="${ZEITWORK_ETC:-/etc/zeitwork}"
VAR="${ZEITWORK_VAR:-/var/lib/zeitwork}"
LOG="${ZEITWORK_LOG:-/var/log/zeitwork}"
UNIT_DIR="${ZEITWORK_SYSTEMD_DIR:-/etc/systemd/system}"
SVC_USER="${ZEITWORK_USER:-zeitwork}"
PYTHON="${ZEITWORK_PYTHON:-}"
WHEEL="${ZEITWORK_WHEEL:-}"
PIP_ARGS="${ZEITWORK_PIP_ARGS:-}"

SERVICES=(operator node-agent load-balancer edge-proxy builder)
MARKER=".zeitwork-install"

say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  "") ;;
  *) die "unknown argument: $1 (see --help)" ;;
esac

# --- checks before anything is touched -------------------------------------------------------
for path in "$PREFIX" "$ETC" "$VAR" "$LOG" "$UNIT_DIR"; do
  case "$path" in
    /*) ;;
    *) die "paths must be absolute: $path" ;;
  esac
  [ "$path" != / ] || die "refusing to install into /"
done
[[ "$SVC_USER" =~ ^[a-z_][a-z0-9_-]{0,30}$ ]] || die "invalid user name: $SVC_USER"

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1
if [ "$IS_ROOT" = 0 ]; then
  if [ "$PREFIX" = /opt/zeitwork ] || [ "$UNIT_DIR" = /etc/systemd/system ]; then
    die "run as root (sudo make install), or set ZEITWORK_* to directories you can write"
  fi
  say "not root: skipping the system user and file ownership"
fi

# The system's interpreter by default: one from pyenv or a home directory would be invisible
# to the services (ProtectHome=yes) and unreadable for the zeitwork user.
if [ -z "$PYTHON" ]; then
  PYTHON=python3
  if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    PYTHON=/usr/bin/python3
  fi
fi
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set ZEITWORK_PYTHON)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
  die "$PYTHON is older than 3.11 (set ZEITWORK_PYTHON)"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
  die "$PYTHON cannot create virtualenvs (Debian: apt-get install python3-venv)"
real_python="$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.executable))')"
case "$real_python" in
  /root/* | /home/*)
    die "$PYTHON is $real_python, which the services cannot see (ProtectHome=yes); set ZEITWORK_PYTHON to a system interpreter such as /usr/bin/python3" ;;
esac

for svc in "${SERVICES[@]}"; do
  [ -f "$SRC_DIR/deployments/config/$svc.env" ] || die "missing template deployments/config/$svc.env"
  [ -f "$SRC_DIR/deployments/systemd/zeitwork-$svc.service" ] ||
    die "missing unit deployments/systemd/zeitwork-$svc.service"
done
[ -f "$SRC_DIR/deployments/bin/zeitwork-env" ] || die "missing deployments/bin/zeitwork-env"
if [ -n "$WHEEL" ]; then
  [ -f "$WHEEL" ] || die "ZEITWORK_WHEEL=$WHEEL does not exist"
  WHEEL="$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")"
fi
if [ -e "$PREFIX" ] && [ ! -e "$PREFIX/$MARKER" ] && [ -n "$(ls -A "$PREFIX" 2>/dev/null)" ]; then
  die "$PREFIX exists and was not made by this installer; move it away or set ZEITWORK_PREFIX"
fi

# Render a template: the default paths and user become the ones chosen above. One pass over
# the text, so a replacement is never replaced again.
render() {  # render SRC DST
  "$PYTHON" - "$1" "$2" "$PREFIX" "$ETC" "$VAR" "$LOG" "$SVC_USER" <<'PY'
import re, sys
src, dst, prefix, etc, var, log, user = sys.argv[1:]
paths = {"/opt/zeitwork": prefix, "/etc/zeitwork": etc,
         "/var/lib/zeitwork": var, "/var/log/zeitwork": log}
text = open(src, encoding="utf-8").read()
pattern = r"(?<![\w./-])(/opt/zeitwork|/etc/zeitwork|/var/lib/zeitwork|/var/log/zeitwork)(?![\w.-])"
text = re.sub(pattern, lambda m: paths[m.group(1)], text)
text = re.sub(r"(?m)^(User|Group|SVC_USER)=zeitwork$", lambda m: f"{m.group(1)}={user}", text)
with open(dst, "w", encoding="utf-8") as fh:
    fh.write(text)
PY
}

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- user and group ---------------------------------------------------------------------------
if [ "$IS_ROOT" = 1 ]; then
  if ! getent group "$SVC_USER" >/dev/null; then
    groupadd --system "$SVC_USER"
    say "created group $SVC_USER"
  fi
  if ! getent passwd "$SVC_USER" >/dev/null; then
    nologin="$(command -v nologin || true)"
    [ -n "$nologin" ] || nologin=/usr/sbin/nologin
    useradd --system --gid "$SVC_USER" --home-dir "$VAR" --no-create-home \
      --shell "$nologin" --comment "Zeitwork services" "$SVC_USER"
    say "created system user $SVC_USER"
  fi
fi

# own OWNER MODE PATH: set mode, and the owner when root.
own() {
  chmod "$2" "$3"
  if [ "$IS_ROOT" = 1 ]; then chown "$1" "$3"; fi
}

# --- directories ------------------------------------------------------------------------------
mkdir -p "$ETC" "$VAR" "$LOG" "$UNIT_DIR"
own root:root 0755 "$ETC"
own "$SVC_USER:$SVC_USER" 0750 "$VAR"
own "$SVC_USER:$SVC_USER" 0750 "$LOG"
# One data directory per service, so that an all-in-one host never mixes the operator's image
# store with the agent's image cache. The agent runs as root and keeps its node credential.
for svc in operator load-balancer edge-proxy; do
  mkdir -p "$VAR/$svc"
  own "$SVC_USER:$SVC_USER" 0750 "$VAR/$svc"
done
mkdir -p "$VAR/node-agent"
own root:root 0700 "$VAR/node-agent"
# The builder runs as root too (buildah); its layer caches are the projects' build inputs.
mkdir -p "$VAR/builder"
own root:root 0700 "$VAR/builder"

# --- virtualenv and package -------------------------------------------------------------------
mkdir -p "$PREFIX"
printf 'Made by zeitwork scripts/install.sh; removed by scripts/uninstall.sh.\n' >"$PREFIX/$MARKER"
if ! "$PREFIX/bin/python" -c '' >/dev/null 2>&1; then
  say "creating virtualenv $PREFIX"
  "$PYTHON" -m venv "$PREFIX"
elif [ "$(readlink -f "$PREFIX/bin/python")" != "$real_python" ]; then
  say "recreating virtualenv $PREFIX for $real_python"
  "$PYTHON" -m venv --clear "$PREFIX"
  printf 'Made by zeitwork scripts/install.sh; removed by scripts/uninstall.sh.\n' >"$PREFIX/$MARKER"
fi
PIP=("$PREFIX/bin/python" -m pip --disable-pip-version-check --no-input)
if [ -n "$WHEEL" ]; then
  wheel="$WHEEL"
else
  say "building the zeitwork wheel from $SRC_DIR (with the mypyc-compiled proxy core unless ZEITWORK_PURE_PYTHON=1)"
  # Not --quiet: the build says whether it compiled the proxy core or fell back, and why.
  # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
  "${PIP[@]}" wheel --verbose --no-deps --wheel-dir "$WORK/dist" $PIP_ARGS "$SRC_DIR" >"$WORK/build.log" 2>&1 || {
    cat "$WORK/build.log" >&2
    die "building the wheel failed (see above; ZEITWORK_PURE_PYTHON=1 builds without a compiler)"
  }
  sed -n 's/^ *zeitwork build: /install: build: /p' "$WORK/build.log"
  wheel="$(ls "$WORK"/dist/zeitwork-*.whl)"
fi
say "installing $(basename "$wheel") into $PREFIX"
# First the package with whatever dependencies are missing, then the package's own files once
# more: a rebuild of the same version must really replace the code of the previous one.
# shellcheck disable=SC2086
"${PIP[@]}" install --quiet $PIP_ARGS "$wheel" || die "pip install failed (see above)"
# shellcheck disable=SC2086
"${PIP[@]}" install --quiet --force-reinstall --no-deps $PIP_ARGS "$wheel" ||
  die "pip install failed (see above)"
[ -x "$PREFIX/bin/zeitwork" ] || die "pip did not install $PREFIX/bin/zeitwork"
if "$PREFIX/bin/python" -c 'import sys, zeitwork.proxy as p; sys.exit(not p.core_compiled())' 2>/dev/null; then
  say "proxy core: compiled (mypyc)"
else
  say "proxy core: pure Python (slower; see the build messages above)"
fi
# zeitwork-env: run an admin command with a service's env file, as its user.
render "$SRC_DIR/deployments/bin/zeitwork-env" "$WORK/zeitwork-env"
install -m 0755 "$WORK/zeitwork-env" "$PREFIX/bin/zeitwork-env"
# The pristine templates, so a later install can tell an edited env file from an untouched one.
mkdir -p "$PREFIX/share/zeitwork/config" "$PREFIX/share/doc/zeitwork"
if [ -f "$SRC_DIR/docs/production.md" ]; then
  install -m 0644 "$SRC_DIR/docs/production.md" "$PREFIX/share/doc/zeitwork/production.md"
fi
chmod 0755 "$PREFIX"

# --- env files --------------------------------------------------------------------------------
kept=()
for svc in "${SERVICES[@]}"; do
  new="$WORK/$svc.env"
  render "$SRC_DIR/deployments/config/$svc.env" "$new"
  dest="$ETC/$svc.env"
  pristine="$PREFIX/share/zeitwork/config/$svc.env"
  if [ ! -e "$dest" ]; then
    install -m 0600 "$new" "$dest"
    say "wrote $dest"
  elif cmp -s "$new" "$dest"; then
    rm -f "$dest.new"                      # up to date (a pending .new was merged)
  elif [ -f "$pristine" ] && cmp -s "$pristine" "$dest"; then
    install -m 0600 "$new" "$dest"         # never edited: follow the new template
    rm -f "$dest.new"
    say "updated $dest (it had not been edited)"
  elif [ -f "$pristine" ] && cmp -s "$pristine" "$new"; then
    :                                      # edited, and the template has not changed: keep
  else
    install -m 0600 "$new" "$dest.new"     # edited: keep it, offer the new template beside it
    kept+=("$dest")
  fi
  install -m 0644 "$new" "$pristine"
done

# --- systemd units ----------------------------------------------------------------------------
units_changed=0
for svc in "${SERVICES[@]}"; do
  unit="zeitwork-$svc.service"
  render "$SRC_DIR/deployments/systemd/$unit" "$WORK/$unit"
  if ! cmp -s "$WORK/$unit" "$UNIT_DIR/$unit"; then
    install -m 0644 "$WORK/$unit" "$UNIT_DIR/$unit"
    units_changed=1
    say "installed $UNIT_DIR/$unit"
  fi
done

# Reload only the running systemd, and only for the units it reads (not for a staging root).
if [ "$units_changed" = 1 ]; then
  if [ -d /run/systemd/system ] && [ "$UNIT_DIR" = /etc/systemd/system ]; then
    systemctl daemon-reload
    say "systemd reloaded"
  else
    say "systemd is not running here (or units went elsewhere): no daemon-reload"
  fi
fi

if [ -d /run/systemd/system ] && [ "$UNIT_DIR" = /etc/systemd/system ]; then
  for svc in "${SERVICES[@]}"; do
    if systemctl is-active --quiet "zeitwork-$svc.service"; then
      say "zeitwork-$svc is running the previous version: systemctl restart zeitwork-$svc"
    fi
  done
fi
for dest in "${kept[@]}"; do
  say "kept your edited $dest; the new template is $dest.new (merge what you need, then delete it)"
done
say "done: $("$PREFIX/bin/zeitwork" --version 2>/dev/null || echo zeitwork) in $PREFIX"
say "next: edit $ETC/<service>.env, then: systemctl enable --now zeitwork-<service>"
