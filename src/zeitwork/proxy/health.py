"""Health as pure decisions: what an active check is (``CheckSpec``) and whether an answer
passes it, active-check rise/fall thresholds, and passive outlier ejection.

No I/O and no clock reads: callers pass ``now`` (monotonic seconds). The active checker loop
(``checker.py``) and the engine feed results in; the pool reads ``available``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CheckKind = Literal["http", "tcp", "none"]


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One backend's active check.

    ``http``: ``GET path`` (``Host: host``, or the backend's address) must answer a status in
    ``[status_min, status_max]`` within ``timeout``; ``tcp``: a connection opens within
    ``timeout``; ``none``: no active check (passive ejection still applies). ``port`` (None:
    the backend's own) is where the check connects. Every ``interval`` seconds; ``rise``
    passes in a row bring an unhealthy backend back, ``fall`` failures take it out.
    """

    kind: CheckKind = "tcp"
    path: str = "/"
    host: str | None = None
    port: int | None = None
    status_min: int = 200
    status_max: int = 399
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 2

    def __post_init__(self) -> None:
        if self.rise < 1 or self.fall < 1:
            raise ValueError("rise and fall must be at least 1")
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        if self.status_min > self.status_max:
            raise ValueError("status_min must not exceed status_max")
        if not self.path.startswith("/") or any(c in self.path for c in " \r\n"):
            raise ValueError("path must start with / and contain no spaces or line breaks")
        if self.host is not None and any(c in self.host for c in " \r\n"):
            raise ValueError("host must contain no spaces or line breaks")

    @property
    def limit(self) -> float:
        """How long one check may take: its timeout, never more than its interval."""
        return min(self.timeout, self.interval)

    def request(self, default_host: str) -> bytes:
        """The HTTP check's request bytes."""
        return (
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host or default_host}\r\n"
            "User-Agent: zeitwork-health\r\nConnection: close\r\n\r\n"
        ).encode()

    def passes(self, status: int) -> bool:
        return self.status_min <= status <= self.status_max


def status_of(line: bytes) -> int | None:
    """The status code of an HTTP/1.x status line; None when it is not one."""
    parts = line.rstrip(b"\r\n").split(b" ", 2)  # the reason phrase is optional
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3:
        return None
    if not parts[1].isdigit():
        return None
    return int(parts[1])


class ActiveHealth:
    """Rise/fall thresholds of active checks.

    A healthy backend turns unhealthy after ``fall`` consecutive failed checks; an unhealthy
    one turns healthy after ``rise`` consecutive successful checks.
    """

    __slots__ = ("_failures", "_successes", "fall", "healthy", "rise")

    def __init__(self, *, rise: int = 2, fall: int = 2, healthy: bool = True) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be at least 1")
        self.rise = rise
        self.fall = fall
        self.healthy = healthy
        self._successes = 0
        self._failures = 0

    def configure(self, *, rise: int, fall: int) -> None:
        """New thresholds; the current state and streaks carry over."""
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be at least 1")
        self.rise = rise
        self.fall = fall

    def reset(self) -> bool:
        """Healthy again with no streak (its checks were switched off); True when changed."""
        changed = not self.healthy
        self.healthy = True
        self._successes = 0
        self._failures = 0
        return changed

    def record(self, ok: bool) -> bool:
        """Record one check result; return True when ``healthy`` changed."""
        if ok:
            self._failures = 0
            self._successes += 1
            if not self.healthy and self._successes >= self.rise:
                self.healthy = True
                self._successes = 0
                return True
            return False
        self._successes = 0
        self._failures += 1
        if self.healthy and self._failures >= self.fall:
            self.healthy = False
            self._failures = 0
            return True
        return False


@dataclass(frozen=True, slots=True)
class EjectionPolicy:
    consecutive_failures: int = 5
    base_seconds: float = 5.0
    max_seconds: float = 120.0


class OutlierDetector:
    """Passive ejection: ``consecutive_failures`` connect errors or 5xx eject the backend for
    ``base_seconds * 2**(ejections-1)`` (capped at ``max_seconds``). A success after the
    ejection ends stops the streak; ``reset_after`` successes in a row reset the back-off."""

    __slots__ = (
        "_consecutive",
        "_successes",
        "ejected_until",
        "ejections",
        "policy",
        "reset_after",
    )

    def __init__(self, policy: EjectionPolicy | None = None, *, reset_after: int = 20) -> None:
        self.policy = policy or EjectionPolicy()
        self.reset_after = reset_after
        self._successes = 0
        self._consecutive = 0
        self.ejections = 0
        self.ejected_until = 0.0

    def is_ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def record_success(self) -> None:
        self._consecutive = 0
        if self.ejections:
            self._successes += 1
            if self._successes >= self.reset_after:
                self.ejections = 0
                self._successes = 0

    def record_failure(self, now: float) -> bool:
        """Record one failure; return True when this failure ejects the backend."""
        if now < self.ejected_until:
            return False
        self._successes = 0
        self._consecutive += 1
        if self._consecutive < self.policy.consecutive_failures:
            return False
        self._consecutive = 0
        self.ejections += 1
        seconds = min(
            self.policy.base_seconds * (2 ** (self.ejections - 1)), self.policy.max_seconds
        )
        self.ejected_until = now + seconds
        return True
