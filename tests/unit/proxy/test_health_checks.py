from __future__ import annotations

import pytest

from zeitwork.proxy.backends import Backend
from zeitwork.proxy.checker import due, next_wake
from zeitwork.proxy.health import ActiveHealth, CheckSpec, status_of


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"rise": 0}, "rise and fall"),
        ({"fall": 0}, "rise and fall"),
        ({"interval": 0}, "interval and timeout"),
        ({"timeout": -1}, "interval and timeout"),
        ({"status_min": 300, "status_max": 299}, "status_min"),
        ({"path": "health"}, "path"),
        ({"path": "/a b"}, "path"),
        ({"path": "/a\r\nX: y"}, "path"),
        ({"host": "a\r\nb"}, "host"),
    ],
)
def test_bad_specs_are_refused(fields: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        CheckSpec(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "ok"), [(199, False), (200, True), (302, True), (399, True), (400, False)]
)
def test_default_status_range_is_2xx_3xx(status: int, ok: bool) -> None:
    assert CheckSpec(kind="http").passes(status) is ok


def test_custom_status_range_is_inclusive() -> None:
    spec = CheckSpec(kind="http", status_min=204, status_max=204)
    assert spec.passes(204)
    assert not spec.passes(200)
    assert not spec.passes(205)


def test_request_uses_the_host_header_or_the_backend_address() -> None:
    spec = CheckSpec(kind="http", path="/ready?full=1")
    assert spec.request("10.0.0.1:80") == (
        b"GET /ready?full=1 HTTP/1.1\r\nHost: 10.0.0.1:80\r\n"
        b"User-Agent: zeitwork-health\r\nConnection: close\r\n\r\n"
    )
    named = CheckSpec(kind="http", path="/", host="app.example.com")
    assert b"\r\nHost: app.example.com\r\n" in named.request("10.0.0.1:80")


def test_one_check_never_outlasts_its_interval() -> None:
    assert CheckSpec(interval=5, timeout=2).limit == 2
    assert CheckSpec(interval=0.5, timeout=2).limit == 0.5


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"HTTP/1.1 200 OK\r\n", 200),
        (b"HTTP/1.0 503 Service Unavailable\r\n", 503),
        (b"HTTP/1.1 204\r\n", 204),
        (b"HTTP/2 200\r\n", None),
        (b"HTTP/1.1 2000 OK\r\n", None),
        (b"HTTP/1.1 abc OK\r\n", None),
        (b"SSH-2.0-OpenSSH\r\n", None),
        (b"", None),
    ],
)
def test_status_of_reads_http1_status_lines_only(line: bytes, status: int | None) -> None:
    assert status_of(line) == status


def test_new_thresholds_keep_the_state_and_reset_clears_it() -> None:
    h = ActiveHealth(rise=2, fall=3)
    h.record(False)
    h.configure(rise=1, fall=2)
    assert h.record(False) is True  # the streak carried over, the new fall applies
    assert not h.healthy
    assert h.reset() is True
    assert h.healthy
    assert h.reset() is False
    with pytest.raises(ValueError):
        h.configure(rise=0, fall=1)


def test_due_skips_busy_draining_none_and_not_yet_due_backends() -> None:
    fresh = Backend("10.0.0.1:80")
    later = Backend("10.0.0.2:80")
    later.next_check = 50.0
    busy = Backend("10.0.0.3:80")
    draining = Backend("10.0.0.4:80")
    draining.drain()
    off = Backend("10.0.0.5:80", check=CheckSpec(kind="none"))
    backends = [fresh, later, busy, draining, off]
    assert due(backends, 10.0, {busy}) == [fresh]
    assert due(backends, 50.0, {busy}) == [fresh, later]


def test_next_wake_is_the_earliest_due_check_capped() -> None:
    a = Backend("10.0.0.1:80")
    a.next_check = 10.3
    b = Backend("10.0.0.2:80")
    b.next_check = 10.1
    off = Backend("10.0.0.3:80", check=CheckSpec(kind="none"))
    assert next_wake([a, b, off], 10.0, cap=0.5) == pytest.approx(0.1)
    assert next_wake([a], 10.0, cap=0.2) == pytest.approx(0.2)
    assert next_wake([a], 11.0) == 0.0  # overdue: at once
    assert next_wake([off], 10.0, cap=0.5) == 0.5
