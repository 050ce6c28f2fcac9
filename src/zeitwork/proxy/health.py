"""Health as pure thresholds: active-check rise/fall and passive outlier ejection.

No I/O and no clock reads: callers pass ``now`` (monotonic seconds). The active checker loop
(``checker.py``) and the engine feed results in; the pool reads ``available``.
"""

from __future__ import annotations

from dataclasses import dataclass


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
