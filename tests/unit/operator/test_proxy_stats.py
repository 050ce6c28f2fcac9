"""Rates and percentiles of an app's requests from the balancers' pushed totals (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from zeitwork.cli.release_view import metrics_text
from zeitwork.operator.db.proxy_stats import StatsSample
from zeitwork.operator.services.proxy_stats import (
    app_metrics,
    balancer_increase,
    increase,
    quantile,
    route_vector,
)

BOUNDS = (0.001, 0.01, 0.1, 1.0)


def totals(
    requests: int, *, errors: int = 0, counts: list[int] | None = None, bytes_out: int = 0
) -> dict[str, Any]:
    counts = counts if counts is not None else [0, requests, 0, 0, 0]
    return {
        "requests": requests,
        "status": {"1xx": 0, "2xx": requests - errors, "3xx": 0, "4xx": 0, "5xx": errors},
        "bytes_in": 10 * requests,
        "bytes_out": bytes_out,
        "latency": {"counts": counts, "count": sum(counts), "sum": 0.0},
    }


def sample(
    at: float,
    routes: dict[str, dict[str, Any]],
    *,
    lb: str = "lb-a",
    started: float = 0.0,
    received: float | None = None,
) -> StatsSample:
    return StatsSample(
        lb_id=lb,
        received=at if received is None else received,
        at=at,
        started_at=started,
        latency_bounds=BOUNDS,
        routes=routes,
    )


# -- quantile -----------------------------------------------------------------------------


def test_quantile_interpolates_within_the_bucket() -> None:
    # 10 observations in (0.001, 0.01]: the median is half way through that bucket
    assert quantile(0.5, BOUNDS, [0, 10, 0, 0, 0]) == pytest.approx(0.0055)
    assert quantile(0.99, BOUNDS, [0, 10, 0, 0, 0]) == pytest.approx(0.001 + 0.009 * 0.99)


def test_quantile_first_bucket_starts_at_zero() -> None:
    assert quantile(0.5, BOUNDS, [4, 0, 0, 0, 0]) == pytest.approx(0.0005)


def test_quantile_picks_the_bucket_holding_the_rank() -> None:
    # 90 fast, 10 slow: p50 is fast, p99 in the slow bucket (0.1, 1.0]
    counts = [0, 90, 0, 10, 0]
    assert quantile(0.5, BOUNDS, counts) == pytest.approx(0.001 + 0.009 * 50 / 90)
    assert quantile(0.99, BOUNDS, counts) == pytest.approx(0.1 + 0.9 * 9 / 10)


def test_quantile_skips_empty_buckets_and_caps_past_the_last_bound() -> None:
    assert quantile(0.5, BOUNDS, [0, 0, 0, 0, 3]) == 1.0
    assert quantile(1.0, BOUNDS, [1, 0, 0, 1, 0]) == pytest.approx(1.0)


def test_quantile_without_observations_is_none() -> None:
    assert quantile(0.5, BOUNDS, [0, 0, 0, 0, 0]) is None
    assert quantile(0.5, (), []) is None


# -- counter differences ------------------------------------------------------------------


def test_increase_is_the_difference() -> None:
    assert increase([1, 2, 3], [4, 2, 5], restarted=False) == [3, 0, 2]


def test_a_counter_that_went_down_without_a_restart_adds_nothing() -> None:
    # one worker of several respawned: the merged total dropped, the others' did not restart
    assert increase([10, 5, 3], [2, 6, 3], restarted=False) == [0, 1, 0]


def test_a_new_started_at_is_a_restart_even_when_counters_grew() -> None:
    assert increase([1, 1], [5, 5], restarted=True) == [5, 5]


def test_a_new_route_counts_from_zero() -> None:
    assert increase(None, [3, 1], restarted=False) == [3, 1]


def test_route_vector_reads_the_wire_shape_and_pads_buckets() -> None:
    t = totals(4, errors=1, counts=[1, 3], bytes_out=99)
    assert route_vector(t, 5) == [4, 1, 40, 99, 1, 3, 0, 0, 0]
    assert route_vector({}, 2) == [0, 0, 0, 0, 0, 0]


def test_balancer_increase_sums_steps_over_the_apps_hosts_only() -> None:
    samples = [
        sample(0, {"a": totals(10), "b": totals(1), "x": totals(500)}),
        sample(5, {"a": totals(30), "b": totals(2), "x": totals(900)}),
        sample(10, {"a": totals(60), "b": totals(2), "x": totals(999)}),
    ]
    found = balancer_increase(samples, {"a", "b"})
    assert found is not None and found.span == 10
    assert found.added[0] == 50 + 1  # a: 10 -> 60, b: 1 -> 2


def test_balancer_increase_through_a_restart() -> None:
    samples = [
        sample(0, {"a": totals(100)}, started=0),
        sample(5, {"a": totals(120)}, started=0),
        sample(10, {"a": totals(7)}, started=8),  # restarted at 8: 7 since
        sample(15, {"a": totals(17)}, started=8),
    ]
    found = balancer_increase(samples, {"a"})
    assert found is not None and found.added[0] == 20 + 7 + 10


def test_balancer_increase_needs_two_samples_apart_in_time() -> None:
    assert balancer_increase([sample(0, {"a": totals(1)})], {"a"}) is None
    assert balancer_increase([sample(3, {}), sample(3, {})], {"a"}) is None


# -- an app's figures ---------------------------------------------------------------------


def test_app_metrics_sums_balancers_and_computes_shares() -> None:
    samples = [
        sample(0, {"a": totals(0)}, lb="lb-a"),
        sample(60, {"a": totals(600, errors=6, bytes_out=6000)}, lb="lb-a"),
        # a second balancer, its own clock far off: only its own span matters
        sample(1000, {"a": totals(100, counts=[0, 0, 0, 100, 0])}, lb="lb-b", received=25),
        sample(1030, {"a": totals(400, counts=[0, 0, 0, 400, 0])}, lb="lb-b", received=55),
    ]
    m = app_metrics(samples, ["a"], now=60)
    assert m is not None
    assert m["window_s"] == 60 and m["load_balancers"] == 2
    assert m["requests_per_s"] == pytest.approx(600 / 60 + 300 / 30)
    assert m["error_rate"] == pytest.approx(6 / 900, abs=1e-4)
    # 600 fast (0.001-0.01] and 300 slow (0.1-1.0]
    assert m["p50_ms"] == pytest.approx((0.001 + 0.009 * 450 / 600) * 1000, abs=0.01)
    assert m["p99_ms"] == pytest.approx((0.1 + 0.9 * (891 - 600) / 300) * 1000, abs=0.01)
    assert m["bytes_in_per_s"] == pytest.approx(6000 / 60 + 3000 / 30, abs=0.1)
    assert m["bytes_out_per_s"] == pytest.approx(100.0)


def test_app_metrics_without_requests_has_no_shares() -> None:
    m = app_metrics([sample(0, {}), sample(5, {})], ["a"], now=5)
    assert m is not None
    assert m["requests_per_s"] == 0 and m["error_rate"] is None
    assert m["p50_ms"] is None and m["p99_ms"] is None


def test_app_metrics_forgets_old_samples_and_gone_balancers() -> None:
    samples = [
        sample(0, {"a": totals(0)}),
        sample(100, {"a": totals(1000)}),  # outside the window of now=200
        sample(180, {"a": totals(1060)}),
        sample(200, {"a": totals(1080)}),
    ]
    m = app_metrics(samples, ["a"], now=200)
    assert m is not None and m["requests_per_s"] == pytest.approx(1.0)
    # the balancer stopped pushing 30 s ago: no figures
    assert app_metrics(samples, ["a"], now=230) is None


def test_app_metrics_without_samples_is_none() -> None:
    assert app_metrics([], ["a"], now=0) is None
    assert app_metrics([sample(0, {"a": totals(5)})], ["a"], now=0) is None


# -- how the CLI prints them --------------------------------------------------------------


def test_the_cli_prints_the_figures_as_one_line() -> None:
    figures = {
        "window_s": 60,
        "requests_per_s": 15.003,
        "error_rate": 0.0199,
        "p50_ms": 0.26,
        "p99_ms": 212.38,
        "bytes_in_per_s": 0.0,
        "bytes_out_per_s": 1861.8,
        "load_balancers": 1,
    }
    assert metrics_text(figures) == (
        "requests (last 60 s): 15 req/s, 5xx 1.99%, p50 0.26 ms, p99 212 ms, in 0 B/s, out 1862 B/s"
    )
    idle = figures | {"requests_per_s": 0.0, "error_rate": None, "p50_ms": None, "p99_ms": None}
    assert metrics_text(idle) == (
        "requests (last 60 s): 0 req/s, 5xx -, p50 -, p99 -, in 0 B/s, out 1862 B/s"
    )
