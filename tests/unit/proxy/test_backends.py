from __future__ import annotations

from zeitwork.proxy.backends import Backend, Pool
from zeitwork.proxy.health import CheckSpec


def _recorder() -> tuple[list[tuple[str, str, bool]], object]:
    seen: list[tuple[str, str, bool]] = []

    def listener(backend: Backend, kind: str, available: bool) -> None:
        seen.append((backend.address, kind, available))

    return seen, listener


def test_a_new_backend_is_available_before_any_check() -> None:
    b = Backend("10.0.0.1:80", check=CheckSpec(kind="http", path="/ready", rise=3, fall=3))
    assert b.available
    assert b.last_check is None
    pool = Pool("app", backends=[b])
    assert pool.pick("1.2.3.4") is b


def test_set_check_changes_thresholds_and_keeps_the_state() -> None:
    seen, listener = _recorder()
    b = Backend("10.0.0.1:80", check=CheckSpec(fall=3), listener=listener)  # type: ignore[arg-type]
    b.record_check(False, "connection refused on :80")
    b.next_check = 99.0
    b.set_check(CheckSpec(kind="http", path="/health", fall=2, rise=1))
    assert b.next_check == 0.0  # checked with the new spec at once
    assert b.available
    b.record_check(False, "GET /health -> 503")
    assert not b.available  # two in a row under the new fall
    assert b.snapshot()["last_check_detail"] == "GET /health -> 503"
    assert b.snapshot()["check"] == "http"
    assert seen == [("10.0.0.1:80", "active", False)]


def test_switching_checks_off_brings_an_unhealthy_backend_back() -> None:
    seen, listener = _recorder()
    b = Backend("10.0.0.1:80", check=CheckSpec(fall=1), listener=listener)  # type: ignore[arg-type]
    pool = Pool("app", backends=[b])
    b.record_check(False)
    assert pool.pick("1.2.3.4") is None
    b.set_check(CheckSpec(kind="none"))
    assert pool.pick("1.2.3.4") is b
    assert seen == [("10.0.0.1:80", "active", False), ("10.0.0.1:80", "active", True)]


def test_the_same_check_again_changes_nothing() -> None:
    b = Backend("10.0.0.1:80", check=CheckSpec(interval=5))
    b.next_check = 42.0
    b.set_check(CheckSpec(interval=5))
    assert b.next_check == 42.0


def test_a_draining_backend_closes_returned_connections_and_leaves_the_pool() -> None:
    # any IdleConnection will do (the compiled Backend no longer checks for UpstreamProtocol)
    class Conn:
        reusable = True
        closed = 0

        def close(self) -> None:
            self.closed += 1

    b = Backend("10.0.0.1:80")
    pool = Pool("app", backends=[b])
    idle = Conn()
    b.put_idle(idle)
    b.drain()
    assert idle.closed == 1 and b.idle == []
    late = Conn()
    b.put_idle(late)  # an in-flight request's connection, finished
    assert late.closed == 1 and b.idle == []
    pool.refresh()
    assert pool.pick("1.2.3.4") is None
