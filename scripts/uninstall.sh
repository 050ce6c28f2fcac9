#!/usr/bin/env bash
# Remove what scripts/install.sh added (`sudo make uninstall`), keeping data and configuration.
#
# Removed:
#   - the units /etc/systemd/system/zeitwork-{operator,node-agent,load-balancer,edge-proxy}.service
#     (each stopped and disabled first when systemd runs; then daemon-reload), and the
#     drop-in directories zeitwork-*.service.d/ only with --purge
#   - /opt/zeitwork: the virtualenv, the pristine env templates and the installed docs
#   - /etc/zeitwork/*.env.new: templates install offered beside edited env files
# Kept (your data; a later install picks them up again):
#   - /etc/zeitwork/*.env: configuration, tokens and secrets you may have edited
#   - /var/lib/zeitwork: databases (embedded PostgreSQL), images, certificates, node state
#   - /var/log/zeitwork: logs
#   - the system user and group zeitwork, which own the kept data (a new user could get a
#     different uid, and the data would no longer be readable by the services)
#
# --purge also removes the kept things: /etc/zeitwork, /var/lib/zeitwork, /var/log/zeitwork,
# the unit drop-ins, and the user and group. This destroys data; there is no undo.
#
# Instances on a node keep running when the agent stops (its unit uses KillMode=process):
# drain the node through the operator before uninstalling from a compute host.
#
# The same ZEITWORK_* variables as install.sh choose the paths (see scripts/install.sh).
set -euo pipefail

PREFIX="${ZEITWORK_PREFIX:-/opt/zeitwork}"
ETC="${ZEITWORK_ETC:-/etc/zeitwork}"
VAR="${ZEITWORK_VAR:-/var/lib/zeitwork}"
LOG="${ZEITWORK_LOG:-/var/log/zeitwork}"
UNIT_DIR="${ZEITWORK_SYSTEMD_DIR:-/etc/systemd/system}"
SVC_USER="${ZEITWORK_USER:-zeitwork}"

SERVICES=(operator node-agent load-balancer edge-proxy builder)
MARKER=".zeitwork-install"

say() { printf 'uninstall: %s\n' "$*"; }
die() { printf 'uninstall: error: %s\n' "$*" >&2; exit 1; }

PURGE=0
for arg in "$@"; do
  case "$arg" in
    --purge) PURGE=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done

for path in "$PREFIX" "$ETC" "$VAR" "$LOG" "$UNIT_DIR"; do
  case "$path" in
    /*) ;;
    *) die "paths must be absolute: $path" ;;
  esac
  [ "$path" != / ] || die "refusing to work on /"
done
[[ "$SVC_USER" =~ ^[a-z_][a-z0-9_-]{0,30}$ ]] || die "invalid user name: $SVC_USER"
if [ "$PURGE" = 1 ]; then
  for dir in "$ETC" "$VAR" "$LOG"; do
    case "$(basename "$dir")" in
      *zeitwork*) ;;
      *) die "refusing to purge $dir: its name does not contain zeitwork" ;;
    esac
  done
fi
if [ "$(id -u)" != 0 ] && { [ "$PREFIX" = /opt/zeitwork ] || [ "$UNIT_DIR" = /etc/systemd/system ]; }; then
  die "run as root (sudo make uninstall)"
fi

# Talk to systemd only when it runs and reads these units (not for a staging root).
SYSTEMD=0
if [ -d /run/systemd/system ] && [ "$UNIT_DIR" = /etc/systemd/system ]; then
  SYSTEMD=1
fi

# --- units ------------------------------------------------------------------------------------
removed_units=0
for svc in "${SERVICES[@]}"; do
  unit="zeitwork-$svc.service"
  if [ "$SYSTEMD" = 1 ]; then
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  fi
  if [ -e "$UNIT_DIR/$unit" ]; then
    rm -f "$UNIT_DIR/$unit"
    removed_units=1
    say "removed $UNIT_DIR/$unit"
  fi
  if [ "$PURGE" = 1 ] && [ -d "$UNIT_DIR/$unit.d" ]; then
    rm -rf "$UNIT_DIR/$unit.d"
    removed_units=1
    say "removed $UNIT_DIR/$unit.d"
  fi
done
if [ "$removed_units" = 1 ] && [ "$SYSTEMD" = 1 ]; then
  systemctl daemon-reload
  systemctl reset-failed 'zeitwork-*' >/dev/null 2>&1 || true
fi

# --- virtualenv -------------------------------------------------------------------------------
if [ -e "$PREFIX/$MARKER" ]; then
  rm -rf "$PREFIX"
  say "removed $PREFIX"
elif [ -e "$PREFIX" ]; then
  say "left $PREFIX alone: it was not made by scripts/install.sh"
fi

# --- env files --------------------------------------------------------------------------------
for svc in "${SERVICES[@]}"; do
  rm -f "$ETC/$svc.env.new"
done

if [ "$PURGE" = 0 ]; then
  [ -d "$ETC" ] && say "kept $ETC (configuration)"
  [ -d "$VAR" ] && say "kept $VAR (data)"
  [ -d "$LOG" ] && say "kept $LOG (logs)"
  getent passwd "$SVC_USER" >/dev/null 2>&1 && say "kept the system user $SVC_USER (owns the data)"
  say "done (scripts/uninstall.sh --purge removes data, configuration and the user too)"
  exit 0
fi

# --- purge ------------------------------------------------------------------------------------
for dir in "$ETC" "$VAR" "$LOG"; do
  if [ -e "$dir" ]; then
    rm -rf "$dir"
    say "purged $dir"
  fi
done
if [ "$(id -u)" = 0 ]; then
  if getent passwd "$SVC_USER" >/dev/null; then
    userdel "$SVC_USER"
    say "removed user $SVC_USER"
  fi
  if getent group "$SVC_USER" >/dev/null; then
    groupdel "$SVC_USER"
    say "removed group $SVC_USER"
  fi
fi
say "done (purged)"
