"""The console's HTML builder and pages (pure): escaping, and what the pages say."""

from __future__ import annotations

import uuid

import pytest

from zeitwork.operator.console import pages
from zeitwork.operator.console.markup import Html, el, join, text

ASSETS = {"css": "/console/static/css/1", "js": "/console/static/js/1"}


def test_text_and_attributes_are_escaped() -> None:
    out = el("a", "<script>&", href='/x?a=1&b="2"', class_="k", aria_live="polite")
    assert out == (
        '<a href="/x?a=1&amp;b=&quot;2&quot;" class="k" aria-live="polite">&lt;script&gt;&amp;</a>'
    )
    assert el("input", required=True, disabled=False, value=None) == "<input required>"
    assert el("p", el("b", "x"), ["a", None, 3]) == "<p><b>x</b>a3</p>"
    assert text(Html("<b>")) == "<b>" and text("<b>") == "&lt;b&gt;"
    assert join(["<", Html("<i>")]) == "&lt;<i>"


def test_void_elements_take_no_content_and_odd_children_are_refused() -> None:
    with pytest.raises(ValueError):
        el("input", "x")
    with pytest.raises(TypeError):
        el("p", object())


def _status(**extra: object) -> dict[str, object]:
    instance = {
        "id": str(uuid.uuid4()),
        "node_id": "n1",
        "version": 2,
        "state": "running",
        "desired_state": "running",
        "health": "healthy",
        "last_check": {"ok": True, "detail": "tcp :8080 open", "checked_at": 0},
        "serving": True,
        "draining": False,
        "exit_code": None,
    }
    base: dict[str, object] = {
        "name": "Shop <&>",
        "slug": "shop",
        "environment": "production",
        "replicas": 2,
        "current_release": {"version": 2, "image_ref": "shop:v2"},
        "rollout": None,
        "instances": [instance, instance | {"health": "unhealthy", "serving": False}],
        "domains": ["shop.example.com"],
        "metrics": None,
    }
    return base | extra


def test_summaries() -> None:
    status = _status()
    assert pages.health_summary(status["instances"], 2) == "1/2 healthy, 1 unhealthy"  # type: ignore[arg-type]
    assert pages.health_summary([], 0) == "0/0 healthy"
    assert pages.metrics_summary(None) == "no figures"
    assert pages.metrics_summary(
        {"requests_per_s": 12.34, "error_rate": 0.015, "p50_ms": 3.2, "p99_ms": 41.7}
    ) == ("12.3 req/s, 1.5% errors, p50 3 ms, p99 42 ms")
    assert pages.metrics_summary({"window_s": 60}) == "no figures"
    assert pages.check_text(None) == "none yet"
    assert pages.check_text({"ok": False, "detail": "GET /healthz -> 500", "checked_at": 0}) == (
        "failed: GET /healthz -> 500 at 00:00:00"
    )
    assert pages.capacity_text({"vcpu": 4.0, "memory": 8192}) == "4 vCPU, 8192 MiB"
    assert pages.capacity_text(None) == "unknown"


def test_app_page_escapes_and_offers_rollback_on_every_release_but_the_current() -> None:
    releases = [
        {
            "version": 2,
            "current": True,
            "state": "active",
            "reason": "deploy",
            "image_ref": "shop:v2",
            "created_at": "2026-12-07T03:00:00+00:00",
        },
        {
            "version": 1,
            "current": False,
            "state": "superseded",
            "reason": "deploy",
            "image_ref": None,
            "image_digest": "sha256:abcdef0123456789",
            "error": None,
            "created_at": "2026-12-07T02:00:00+00:00",
        },
    ]
    body = pages.app(
        status=_status(),
        releases=releases,
        nodes={"n1": {"hostname": "worker-1"}},
        csrf="tok",
        notice_html=pages.notice(done="rollback"),
    )
    page = pages.layout(title="Shop <&>", body=body, assets=ASSETS, csrf="tok", nav="apps")
    assert page.startswith("<!doctype html>")
    assert "<h1>Shop &lt;&amp;&gt;</h1>" in page and "<h1>Shop <&>" not in page
    assert page.count('action="/apps/shop/rollback"') == 2  # the previous one, and v1
    assert '<input type="hidden" name="version" value="1">' in page
    assert '<input type="hidden" name="version" value="2">' not in page
    assert "Node worker-1" in page and "abcdef01" in page
    assert 'role="status"' in page and "Rollback started" in page
    assert 'data-stream="/api/v1/events?project=shop&amp;follow=true&amp;limit=20"' in page
    assert page.count('name="csrf" value="tok"') == 5  # sign out, deploy, scale, 2 rollbacks
    assert "2026-12-07 02:00:00 UTC" in page


def test_notices_are_fixed_texts() -> None:
    assert pages.notice(done="<script>") is None
    assert pages.notice() is None
    error = pages.notice(error="capacity: <1 vCPU short>")
    assert error is not None and "&lt;1 vCPU short&gt;" in error and 'role="alert"' in error


def test_nodes_page_offers_drain_or_undrain_by_state() -> None:
    nodes = [
        {
            "id": "a",
            "hostname": "one",
            "state": "ready",
            "ip_address": "10.0.0.1",
            "resources": {"vcpu": 4, "memory": 8192},
            "heartbeat": None,
            "last_heartbeat_at": None,
        },
        {
            "id": "b",
            "hostname": "two",
            "state": "draining",
            "ip_address": "10.0.0.2",
            "resources": {"vcpu": 2, "memory": 4096},
            "heartbeat": {"used": {"vcpu": 1, "memory": 512}},
            "last_heartbeat_at": None,
        },
        {
            "id": "c",
            "hostname": "three",
            "state": "down",
            "ip_address": "10.0.0.3",
            "resources": {"vcpu": 2, "memory": 4096},
            "heartbeat": None,
            "last_heartbeat_at": None,
        },
    ]
    page = join(pages.nodes_page(nodes, csrf="t", notice_html=None))
    assert 'action="/nodes/a/drain"' in page and 'action="/nodes/b/undrain"' in page
    assert "/nodes/c/" not in page
    assert "1 vCPU, 512 MiB" in page


def test_sign_in_page_has_a_labelled_password_field() -> None:
    page = join(pages.sign_in(error="That token is unknown"))
    assert '<label for="token">API token</label>' in page
    assert 'type="password"' in page and 'autocomplete="off"' in page
    assert 'role="alert"' in page
