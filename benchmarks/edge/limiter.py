"""Cost of one rate-limit decision with a million distinct client keys (ns per decision)."""

from __future__ import annotations

import random
import time

from zeitwork.edge.rate_limit import Quota, RateLimiter


def main() -> None:
    quota = Quota(rps=100, burst=200)
    limiter = RateLimiter(capacity=1_100_000)
    keys = [f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}" for i in range(1_000_000)]
    allow = limiter.allow
    now = 1000.0
    start = time.perf_counter()
    for key in keys:
        allow(key, now, quota)
    insert = (time.perf_counter() - start) / len(keys) * 1e9
    random.seed(7)
    random.shuffle(keys)
    best = float("inf")
    for round_ in range(3):
        t = now + 0.001 * (round_ + 1)
        start = time.perf_counter()
        for key in keys:
            allow(key, t, quota)
        best = min(best, (time.perf_counter() - start) / len(keys) * 1e9)
    # a full table: every decision for a new key evicts the stalest entry
    small = RateLimiter(capacity=100_000)
    start = time.perf_counter()
    for key in keys:
        small.allow(key, now, quota)
    evicting = (time.perf_counter() - start) / len(keys) * 1e9
    print(f"limiter: entries={len(limiter)} new-key={insert:.0f} ns/decision")
    print(f"limiter: known-key (random order, 1M keys)={best:.0f} ns/decision")
    print(f"limiter: full-table eviction (capacity 100k, 1M keys)={evicting:.0f} ns/decision")


if __name__ == "__main__":
    main()
