"""Running the build's tools (git, buildah): argv lists only, a clean environment, output
streamed as it comes, a wall-clock limit and the whole process group killed at the end.

Each tool runs in its own session (``start_new_session``), so a timeout, a cancel or the
builder stopping kills every process the tool started (buildah's RUN steps included):
SIGTERM to the group, SIGKILL after ``grace`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from zeitwork.core.errors import ZeitworkError

Sink = Callable[[str], Awaitable[None]]

SAFE_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
"""The builder's own variables a tool may see (never its token or the host's secrets)."""
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


class StepFailed(ZeitworkError):
    """A step of the build failed; ``step`` names it, the detail says why."""

    code = "build-step-failed"

    def __init__(self, detail: str, *, step: str) -> None:
        super().__init__(detail)
        self.step = step


class Stopped(ZeitworkError):
    """The build was stopped from outside (cancelled, or the builder is stopping)."""

    code = "build-stopped"


@dataclass(frozen=True, slots=True)
class Limits:
    timeout: float
    """wall-clock seconds left for the whole build"""
    grace: float = 5.0


def clean_env(base: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: base[k] for k in (*SAFE_ENV, *PROXY_ENV) if base.get(k)}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.update(extra or {})
    return env


async def run(
    argv: Sequence[str],
    *,
    step: str,
    env: Mapping[str, str],
    sink: Sink,
    deadline: float,
    stop: asyncio.Event,
    cwd: Path | None = None,
    grace: float = 5.0,
    on_start: Callable[[int], None] | None = None,
) -> int:
    """Run ``argv`` to its end; its output (stdout and stderr together) goes to ``sink``.
    Returns the exit status; raises ``StepFailed`` past ``deadline`` (a ``time.monotonic``
    value) and ``Stopped`` when ``stop`` is set, after killing the process group.
    ``on_start(pid)`` runs as soon as the process exists."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise StepFailed("the build ran out of time before this step", step=step)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    assert proc.stdout is not None
    if on_start is not None:
        on_start(proc.pid)  # e.g. into the build's cgroup, before it forks its steps

    async def pump() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            await sink(chunk.decode("utf-8", errors="replace"))

    reader = asyncio.create_task(pump(), name=f"output:{step}")
    waiter = asyncio.create_task(proc.wait(), name=f"wait:{step}")
    stopper = asyncio.create_task(stop.wait(), name=f"stop:{step}")
    try:
        done, _ = await asyncio.wait(
            {waiter, stopper}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            await _kill_group(proc, grace)
            await asyncio.wait({reader}, timeout=grace)
            if stopper in done:
                raise Stopped(f"stopped during {step}")
            raise StepFailed("the build took longer than its time limit and was killed", step=step)
        await asyncio.wait({reader}, timeout=grace)  # the rest of the output
        return waiter.result()
    finally:
        for task in (reader, waiter, stopper):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if proc.returncode is None:
            await _kill_group(proc, grace)


async def _kill_group(proc: asyncio.subprocess.Process, grace: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            continue
        # the leader is gone; its group may still hold children: finish them too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


async def capture(
    argv: Sequence[str], *, env: Mapping[str, str], limit: float, cwd: Path | None = None
) -> tuple[int, str]:
    """Run a short command; (exit status, its output) — killed past ``limit`` seconds."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env),
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        await _kill_group(proc, 2.0)
        return -1, f"timed out after {limit:.0f} s"
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", errors="replace")
