"""How the app verbs show releases, status, configuration, events and log lines, and how they
read their arguments (``K=V``, ``v3``, ``10m``). Pure: models in, rows and text out."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from zeitwork.core.errors import InvalidInput
from zeitwork.core.states import RolloutState
from zeitwork.wire.admin import LogNotice, LogRecord
from zeitwork.wire.health import HealthResult
from zeitwork.wire.releases import AppStatus, EnvOut, EventOut, InstanceBrief, ReleaseOut

Row = tuple[str, ...]

RELEASE_COLUMNS = ("VERSION", "IMAGE", "STATE", "REPLICAS", "REASON", "CREATED", "CAUSE")
INSTANCE_COLUMNS = ("INSTANCE", "NODE", "RELEASE", "STATE", "HEALTH", "LAST CHECK", "ADDRESS")
APP_COLUMNS = ("APP", "RELEASE", "STATE", "INSTANCES", "DOMAINS")
ENV_COLUMNS = ("NAME", "VALUE")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def short(value: uuid.UUID | None) -> str:
    return str(value)[:8] if value is not None else "-"


def when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def version_text(version: int | None) -> str:
    return f"v{version}" if version is not None else "-"


def parse_version(text: str) -> int:
    """``v3`` or ``3`` -> 3."""
    digits = text.strip().lower().removeprefix("v")
    if not digits.isdigit() or int(digits) < 1:
        raise InvalidInput(f"{text!r} is not a release version (v1, v2, ...)")
    return int(digits)


def parse_assignments(pairs: Iterable[str]) -> dict[str, str]:
    """``K=V`` arguments (a value may hold ``=``); the last one of a name wins."""
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InvalidInput(f"{pair!r}: expected NAME=VALUE")
        env[name] = value
    return env


def parse_since(text: str, now: datetime) -> datetime:
    """``90s``, ``10m``, ``2h``, ``1d`` before ``now``, or an ISO 8601 time (UTC if it has
    no offset)."""
    value = text.strip()
    if match := _DURATION.match(value):
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(f"--since {text!r}: give a duration (10m, 2h) or a time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def image_text(release: ReleaseOut) -> str:
    if release.image_ref:
        return release.image_ref
    if release.image_digest:
        return release.image_digest[:19]
    return short(release.image_id)


def release_state_text(release: ReleaseOut) -> str:
    return f"{release.state.value} (current)" if release.current else release.state.value


def release_rows(releases: Sequence[ReleaseOut]) -> list[Row]:
    return [
        (
            version_text(r.version),
            image_text(r),
            release_state_text(r),
            str(r.replicas),
            r.reason + (f" of v{source}" if (source := _source_version(r, releases)) else ""),
            when(r.created_at),
            _one_line(r.error or "", 100) or "-",
        )
        for r in releases
    ]


def _source_version(release: ReleaseOut, releases: Sequence[ReleaseOut]) -> int | None:
    if release.source_release_id is None:
        return None
    for other in releases:
        if other.id == release.source_release_id:
            return other.version
    return None


def _one_line(text: str, limit: int) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def check_text(result: HealthResult | None, now: datetime) -> str:
    """``ok 3 ms, 2 s ago`` / ``GET /healthz -> 500, 4 s ago``."""
    if result is None:
        return "-"
    text = result.detail or ("ok" if result.ok else "failed")
    if result.ok and result.latency_ms is not None and not result.detail:
        text += f" {result.latency_ms:.0f} ms"
    if result.checked_at is not None:
        ago = max(0.0, now.timestamp() - result.checked_at)
        text += f", {ago:.0f} s ago"
    return text


def instance_state_text(instance: InstanceBrief) -> str:
    state = instance.state.value
    if instance.draining:
        state += ", draining"
    elif instance.serving:
        state += ", serving"
    if instance.exit_code is not None:
        state += f", exit {instance.exit_code}"
    return state


def instance_rows(instances: Sequence[InstanceBrief], now: datetime) -> list[Row]:
    ordered = sorted(instances, key=lambda i: (-(i.version or 0), str(i.node_id), str(i.id)))
    return [
        (
            short(i.id),
            short(i.node_id),
            version_text(i.version),
            instance_state_text(i),
            i.health.value,
            check_text(i.last_check, now),
            f"{i.ip_address}:{i.port}" if i.ip_address else "-",
        )
        for i in ordered
    ]


def url_of(domain: str) -> str:
    return f"http://{domain}/"


def metrics_text(metrics: dict[str, Any] | None) -> str | None:
    """The status's request figures as one line, in a stable order."""
    if not metrics:
        return None
    if "requests_per_s" in metrics:  # the operator's figures (operator/services/proxy_stats)
        return _request_figures(metrics)
    parts = []
    for key in sorted(metrics):
        value = metrics[key]
        parts.append(f"{key} {value:g}" if isinstance(value, int | float) else f"{key} {value}")
    return "requests (last minute): " + ", ".join(parts)


def _request_figures(m: dict[str, Any]) -> str:
    """``requests (last 60 s): 15 req/s, 5xx 2%, p50 0.26 ms, p99 212 ms, in 0 B/s, ...``."""

    def number(key: str, unit: str, scale: float = 1.0) -> str:
        value = m.get(key)
        if not isinstance(value, int | float):
            return "-"
        value *= scale
        return (f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}") + unit

    return (
        f"requests (last {m.get('window_s', 60)} s): {number('requests_per_s', ' req/s')}, "
        f"5xx {number('error_rate', '%', 100)}, p50 {number('p50_ms', ' ms')}, "
        f"p99 {number('p99_ms', ' ms')}, in {number('bytes_in_per_s', ' B/s')}, "
        f"out {number('bytes_out_per_s', ' B/s')}"
    )


def status_header(status: AppStatus) -> list[str]:
    """What ``zeitwork status`` prints above its instance table."""
    lines = [f"app {status.slug} ({status.environment}): {status.replicas} replica(s) desired"]
    current = status.current_release
    if current is None:
        lines.append("  no current release: zeitwork deploy --app " + status.slug + " --image ...")
    else:
        lines.append(
            f"  current release {version_text(current.version)}: {image_text(current)}, "
            f"{current.state.value} since {when(current.state_changed_at)} ({current.reason})"
        )
    if status.rollout is not None:
        rollout = status.rollout
        lines.append(
            f"  rollout {short(rollout.id)} ({rollout.strategy}): {rollout.state.value}"
            + (f": {_one_line(rollout.error, 100)}" if rollout.error else "")
        )
    serving = sum(1 for i in status.instances if i.serving and not i.draining)
    healthy = sum(1 for i in status.instances if i.health.value == "healthy")
    lines.append(f"  instances: {len(status.instances)} ({healthy} healthy, {serving} serving)")
    for domain in status.domains:
        lines.append(f"  domain {domain}: {url_of(domain)}")
    if (figures := metrics_text(status.metrics)) is not None:
        lines.append("  " + figures)
    return lines


def app_row(slug: str, status: AppStatus | None) -> Row:
    if status is None:
        return (slug, "-", "-", "-", "-")
    current = status.current_release
    serving = sum(1 for i in status.instances if i.serving and not i.draining)
    state = current.state.value if current else "-"
    if status.rollout is not None and status.rollout.state is RolloutState.RUNNING:
        state += ", rolling out"
    return (
        slug,
        version_text(current.version) if current else "-",
        state,
        f"{serving}/{status.replicas} serving",
        ", ".join(status.domains) or "-",
    )


def env_rows(env: EnvOut) -> list[Row]:
    """Plain variables with their values; secrets by name only."""
    rows = [(name, value) for name, value in sorted(env.env.items())]
    rows += [(name, "(secret)") for name in sorted(env.secret_names)]
    return sorted(rows)


def event_line(event: EventOut) -> str:
    """``time kind [LEVEL] [instance 1a2b3c4d | node 5e6f7a8b]: message`` (time in UTC)."""
    level = "" if event.level == "info" else f" {event.level.upper()}"
    subject = ""
    if event.instance_id is not None:
        subject = f" instance {short(event.instance_id)}"
    elif event.node_id is not None:
        subject = f" node {short(event.node_id)}"
    return f"{when(event.created_at)} {event.kind}{level}{subject}: {event.message}"


def log_text(record: LogRecord) -> tuple[str, bool]:
    """A log record as printed, and whether it is a notice (stderr) rather than app output."""
    if isinstance(record, LogNotice):
        return record.notice, True
    stamp = record.ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    stream = " stderr" if record.stream == "stderr" else ""
    label = f"{record.release or '-'} {short(record.instance_id)}{stream}"
    return f"{stamp} {label}: {record.line}", False
