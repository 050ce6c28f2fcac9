"""One watch loop for every versioned long-poll a service keeps with the operator: the
agent's assignments, the load balancer's and the edge's route tables.

The operator answers ``GET …?version=V&wait=S`` at once when its state is newer than ``V``,
else when something changes or ``S`` seconds have passed (then with the same version).
``VersionedPoll`` keeps that conversation:

- the first fetch, and one every ``full_refresh`` seconds, asks for the whole state (no
  version, no wait) and applies it even when the version is the same: it repairs anything a
  long-poll missed (a lost change, a restarted operator whose versions started again);
- in between it long-polls with the version last applied, never waiting past the next full
  refresh, and applies an answer whose version differs;
- a failed fetch (``ZeitworkError``, ``OSError``) is retried after a back-off that doubles
  from ``retry_base`` to ``retry_max`` with jitter (each sleep is shortened by up to
  ``jitter`` of itself, so that many nodes do not retry in step after an operator restart);
  a success resets it. ``last_error`` says what failed, None once a fetch succeeds.

``apply`` runs in the loop; an exception from it ends the loop (a bug stops the service
loudly), unless its type is in ``apply_errors``: then it is logged and retried like a failed
fetch, and the version is not advanced.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from zeitwork.core.errors import ZeitworkError
from zeitwork.wire.routes import RouteTable


class Versioned(Protocol):
    @property
    def version(self) -> int: ...


StateT = TypeVar("StateT", bound=Versioned)


class RouteSource(Protocol):
    """Where the load balancer and the edge get the route table (``clients/routes.py``)."""

    async def fetch(self, *, version: int | None = None, wait: float = 0.0) -> RouteTable: ...


class VersionedPoll(Generic[StateT]):
    """``fetch(version, wait)`` returns the state; ``apply(state, full)`` takes it in."""

    def __init__(
        self,
        *,
        fetch: Callable[[int | None, float], Awaitable[StateT]],
        apply: Callable[[StateT, bool], None],
        log: Any,
        failed_event: str,
        wait: float = 30.0,
        full_refresh: float = 60.0,
        retry_base: float = 0.5,
        retry_max: float = 30.0,
        jitter: float = 0.25,
        apply_errors: tuple[type[Exception], ...] = (),
        on_error: Callable[[Exception], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._fetch = fetch
        self._apply = apply
        self._log = log
        self._failed_event = failed_event
        self.wait = wait
        self.full_refresh = full_refresh
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.jitter = jitter
        self._apply_errors = apply_errors
        self._on_error = on_error
        self._rng = rng or random.Random()  # noqa: S311 (jitter, not a secret)
        self.version: int | None = None
        self.synced = asyncio.Event()
        self.last_error: str | None = None
        self.fetches = 0
        self._delay = 0.0
        self._last_full: float | None = None

    def next_delay(self) -> float:
        """Advance the back-off; the sleep to take now (jittered, never above the cap)."""
        self._delay = self.retry_base if self._delay <= 0 else self._delay * 2
        self._delay = min(self.retry_max, self._delay)
        return self._delay * (1.0 - self.jitter * self._rng.random())

    async def run(self) -> None:
        while True:
            sleep = await self.poll_once()
            if sleep:
                await asyncio.sleep(sleep)

    async def poll_once(self) -> float:
        """One fetch (and apply); the back-off to sleep before the next one (0: none)."""
        now = asyncio.get_running_loop().time()
        full = self._last_full is None or now - self._last_full >= self.full_refresh
        try:
            self.fetches += 1
            if full:
                state = await self._fetch(None, 0.0)
            else:
                assert self._last_full is not None
                left = self.full_refresh - (now - self._last_full)
                state = await self._fetch(self.version, min(self.wait, max(1.0, left)))
        except (ZeitworkError, OSError) as exc:
            return self._failed(exc)
        if full or state.version != self.version:
            try:
                self._apply(state, full)
            except self._apply_errors as exc:
                self._log.exception("poll.apply_failed", version=state.version)
                return self._failed(exc)
            self.version = state.version
        if full:
            self._last_full = asyncio.get_running_loop().time()
        self._delay = 0.0
        self.last_error = None
        self.synced.set()
        return 0.0

    def _failed(self, exc: Exception) -> float:
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self._on_error is not None:
            self._on_error(exc)
        sleep = self.next_delay()
        self._log.warning(self._failed_event, error=self.last_error, retry_in=round(sleep, 3))
        return sleep
