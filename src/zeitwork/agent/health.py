"""Health checks beside each running instance: the probes (a TCP connect, or a raw HTTP/1.1
``GET`` over asyncio streams: no HTTP client is needed to read one status line) and the
monitor that runs one check loop per instance and folds the results through the pure
``health_rules``.

The agent reaches the instance's address directly (it is on the node bridge). A result's
``detail`` is what a person reads: ``GET /healthz -> 500``, ``connection refused on :8080``,
``timed out after 2 s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from zeitwork.agent import health_rules as rules
from zeitwork.observability import get_logger
from zeitwork.wire.health import HealthCheck, HealthResult, InstanceHealth

log = get_logger(__name__)
MAX_STATUS_LINE = 1024
USER_AGENT = "zeitwork-health"


class _BadResponse(Exception):
    """The instance answered something that is not an HTTP/1.x status line (module-local)."""


def _connect_error(exc: OSError, port: int) -> str:
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return f"connection refused on :{port}"
    if isinstance(exc, ConnectionResetError):
        return f"connection reset on :{port}"
    what = exc.strerror or str(exc) or type(exc).__name__
    return f"{what.lower()} on :{port}"


def _status_code(line: bytes) -> int:
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise _BadResponse
    code = int(parts[1])
    if not 100 <= code <= 599:
        raise _BadResponse
    return code


def _request(check: HealthCheck, address: str, port: int) -> bytes:
    host = check.host or (f"[{address}]:{port}" if ":" in address else f"{address}:{port}")
    return (
        f"GET {check.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


async def probe(check: HealthCheck, address: str, port: int) -> HealthResult:
    """Run ``check`` once against ``address:port`` (never raises for the instance's faults)."""
    checked_at = time.time()
    began = time.perf_counter()

    def result(ok: bool, detail: str, status: int | None = None) -> HealthResult:
        return HealthResult(
            ok=ok,
            detail=detail[:500],
            status_code=status,
            latency_ms=round((time.perf_counter() - began) * 1000, 2),
            checked_at=checked_at,
        )

    if check.type == "none":
        return result(True, "running")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(address, port)
            if check.type == "tcp":
                return result(True, f"connected to :{port}")
            writer.write(_request(check, address, port))
            await writer.drain()
            line = await reader.readuntil(b"\n")
            if len(line) > MAX_STATUS_LINE:
                raise _BadResponse
            status = _status_code(line)
    except TimeoutError:
        return result(False, f"timed out after {rules.seconds(check.timeout)} s")
    except asyncio.IncompleteReadError:
        return result(False, f"GET {check.path}: connection closed before a response")
    except (asyncio.LimitOverrunError, _BadResponse):
        return result(False, f"GET {check.path}: not an HTTP response")
    except OSError as exc:
        return result(False, _connect_error(exc, port))
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    ok = check.expected_status_min <= status <= check.expected_status_max
    return result(ok, rules.http_detail(check.path, status), status)


def _loud(task: asyncio.Task[None]) -> None:
    """A check loop that crashed is a bug: say so (the instance's health stops moving)."""
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "instance.health_loop_crashed", task=task.get_name(), error=repr(task.exception())
        )


OnChange = Callable[[uuid.UUID, InstanceHealth], None]
OnUnhealthy = Callable[[uuid.UUID, str], None]


@dataclass
class _Watch:
    check: HealthCheck
    address: str
    port: int
    started_at: float
    tracker: rules.Tracker
    task: asyncio.Task[None] | None = None


class HealthMonitor:
    """One check loop per running instance. ``on_change`` is called when an instance's
    health state changes (the supervisor reports it at once); ``on_unhealthy`` when an
    instance that was healthy failed ``unhealthy_threshold`` checks in a row (liveness:
    the supervisor restarts it)."""

    def __init__(
        self,
        *,
        on_change: OnChange,
        on_unhealthy: OnUnhealthy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._on_change = on_change
        self._on_unhealthy = on_unhealthy
        self._clock = clock
        self._watches: dict[uuid.UUID, _Watch] = {}

    def health(self, instance_id: uuid.UUID) -> InstanceHealth | None:
        watch = self._watches.get(instance_id)
        return None if watch is None else watch.tracker.report()

    def watching(self, instance_id: uuid.UUID) -> bool:
        return instance_id in self._watches

    def watch(
        self,
        instance_id: uuid.UUID,
        *,
        check: HealthCheck | None,
        default_port: int,
        address: str,
        started_at: float,
    ) -> None:
        """Start checking a run of an instance (replaces an earlier watch of it)."""
        self.forget(instance_id)
        chosen, port = rules.effective_check(check, default_port)
        watch = _Watch(
            check=chosen,
            address=address,
            port=port,
            started_at=started_at,
            tracker=rules.initial(chosen),
        )
        self._watches[instance_id] = watch
        if chosen.type != "none":
            watch.task = asyncio.create_task(
                self._loop(instance_id, watch), name=f"health-{instance_id.hex[:8]}"
            )
            watch.task.add_done_callback(_loud)

    def forget(self, instance_id: uuid.UUID) -> None:
        watch = self._watches.pop(instance_id, None)
        if watch is not None and watch.task is not None:
            watch.task.cancel()

    async def close(self) -> None:
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        self._watches.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self, instance_id: uuid.UUID, watch: _Watch) -> None:
        while self._watches.get(instance_id) is watch:
            began = self._clock()
            result = await probe(watch.check, watch.address, watch.port)
            if self._watches.get(instance_id) is not watch:
                return  # forgotten (stopped, restarted) while the check ran
            grace = rules.in_grace(watch.check, started_at=watch.started_at, now=self._clock())
            verdict = rules.observe(watch.tracker, result, check=watch.check, grace=grace)
            watch.tracker = verdict.tracker
            if verdict.changed:
                log.info(
                    "instance.health",
                    instance_id=str(instance_id),
                    state=verdict.tracker.state.value,
                    detail=result.detail,
                    failures=verdict.tracker.consecutive_failures,
                )
                self._on_change(instance_id, verdict.tracker.report())
            if verdict.restart and verdict.reason is not None:
                log.warning(
                    "instance.liveness_failed", instance_id=str(instance_id), reason=verdict.reason
                )
                self._on_unhealthy(instance_id, verdict.reason)
                return
            await asyncio.sleep(max(0.0, watch.check.interval - (self._clock() - began)))
