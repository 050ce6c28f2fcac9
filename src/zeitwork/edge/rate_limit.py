"""Per-client rate limiting with GCRA in a table of fixed capacity.

GCRA (the generic cell rate algorithm) keeps one number per client: the theoretical arrival
time (TAT) of its next request. With an emission interval ``T = 1 / rps`` and a tolerance
``tau = T * burst`` a request at ``now`` is allowed when ``max(TAT, now) + T - now <= tau``.
An entry whose TAT lies in the past carries no information (the client has its whole burst
back), so it can be dropped at any time without changing any decision: that is what
"expired" means here.

Memory is bounded by ``capacity``. The table is kept in least-recently-seen order. Each new
client drops up to two expired entries from the stale end (so the table shrinks as fast as
it grows), and a new client arriving at a full table evicts the stalest entry, which is
normally expired. Only under a flood of distinct addresses faster than
``capacity / (burst / rps)`` per second is a live entry evicted, and that is counted in
``evicted_live`` so it shows in metrics. No other client's state is touched, and the table
is never wiped.

The module is pure: the caller passes ``now`` (a monotonic clock in seconds).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

DEFAULT_CAPACITY = 200_000
_SWEEP_PER_DECISION = 2


@dataclass(frozen=True, slots=True)
class Quota:
    """A limit: ``rps`` requests per second on average, ``burst`` at once."""

    rps: float
    burst: int
    name: str = "default"
    interval: float = field(init=False)
    tolerance: float = field(init=False)
    policy_header: str = field(init=False)

    def __post_init__(self) -> None:
        if not (self.rps > 0 and math.isfinite(self.rps)):
            raise ValueError(f"rate limit rps must be a positive number, not {self.rps!r}")
        if self.burst < 1:
            raise ValueError(f"rate limit burst must be at least 1, not {self.burst!r}")
        interval = 1.0 / self.rps
        object.__setattr__(self, "interval", interval)
        # A nanosecond of slack absorbs floating-point error in ``(now + T) - now``.
        object.__setattr__(self, "tolerance", interval * self.burst + 1e-9)
        window = max(1, math.ceil(self.burst / self.rps))
        object.__setattr__(
            self, "policy_header", f'"{self.name}";q={round(self.rps * window)};w={window}'
        )


@dataclass(frozen=True, slots=True)
class RateDecision:
    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float


class RateLimiter:
    """GCRA decisions per key over a bounded least-recently-seen table."""

    __slots__ = ("_capacity", "_get", "_move", "_table", "evicted_live", "limited")

    def __init__(self, *, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("rate limiter capacity must be at least 1")
        self._capacity = capacity
        self._table: OrderedDict[str, float] = OrderedDict()
        self._get = self._table.get  # bound methods, looked up once: this is the hot path
        self._move = self._table.move_to_end
        self.evicted_live = 0
        self.limited = 0

    def __len__(self) -> int:
        return len(self._table)

    @property
    def capacity(self) -> int:
        return self._capacity

    def allow(self, key: str, now: float, quota: Quota) -> bool:
        """The hot path: True when the request may pass (no header details computed)."""
        tat = self._get(key)
        if tat is None:
            # A client the table does not know (or forgot because its entry expired):
            # its first request is always within the burst.
            table = self._table
            if len(table) >= self._capacity:
                self._make_room(now)
            elif table:
                self._sweep(now)
            table[key] = now + quota.interval
            return True
        if tat < now:  # noqa: PLR1730 - a compare is cheaper than max() on the hot path
            tat = now
        tat += quota.interval
        if tat - now > quota.tolerance:
            self.limited += 1
            self._move(key)
            return False
        self._table[key] = tat
        self._move(key)
        return True

    def decide(self, key: str, now: float, quota: Quota) -> RateDecision:
        """Like ``allow`` but also says how many requests remain and when to retry."""
        table = self._table
        before = table.get(key)
        allowed = self.allow(key, now, quota)
        tat = table.get(key, now if before is None else before)
        base = max(tat, now)
        if allowed:
            remaining = int((quota.tolerance - (base - now)) / quota.interval + 1e-9)
            return RateDecision(True, max(0, remaining), 0.0, max(0.0, base - now))
        retry = base + quota.interval - quota.tolerance - now
        return RateDecision(False, 0, max(retry, 0.0), max(0.0, base - now))

    def peek(self, key: str) -> float | None:
        return self._table.get(key)

    def expire(self, now: float) -> int:
        """Drop every expired entry (for a periodic sweep); returns how many went."""
        table = self._table
        dropped = 0
        for key in [k for k, tat in table.items() if tat <= now]:
            del table[key]
            dropped += 1
        return dropped

    def _sweep(self, now: float) -> None:
        # Amortised clean-up on each insertion: drop up to two expired entries from the
        # stale end, so the table shrinks as fast as it can grow.
        table = self._table
        for _ in range(_SWEEP_PER_DECISION):
            key = next(iter(table))
            if table[key] > now:
                return
            del table[key]
            if not table:
                return

    def _make_room(self, now: float) -> None:
        table = self._table
        if len(table) < self._capacity:
            return
        # Least-recently-seen order: the stalest entry goes, and only that one. It is
        # normally expired (no information lost); otherwise the eviction is counted.
        _, tat = table.popitem(last=False)
        if tat > now:
            self.evicted_live += 1
