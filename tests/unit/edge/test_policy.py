from __future__ import annotations

import json

import pytest

from zeitwork.edge.cors import policy_from
from zeitwork.edge.main import ConnectionCaps, _domain_rate_limits, _lb_address, build_policy
from zeitwork.edge.policy import DomainPolicy, EdgePolicy
from zeitwork.edge.rate_limit import Quota, RateLimiter
from zeitwork.edge.security_headers import SecurityHeaders, SecurityHeadersConfig
from zeitwork.edge.settings import EdgeSettings
from zeitwork.proxy.types import ClientInfo, RequestHead
from zeitwork.settings import SettingsError, parse_settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _head(
    target: bytes = b"/", host: str = "app.test", method: bytes = b"GET", **headers: str
) -> RequestHead:
    hdrs = [(b"host", host.encode())] + [
        (k.replace("_", "-").lower().encode(), v.encode()) for k, v in headers.items()
    ]
    return RequestHead(
        method=method,
        target=target,
        path=target.decode(),
        host=host,
        http_version="1.1",
        headers=hdrs,
    )


def _policy(
    clock: Clock, *, cors: bool = False, domains: dict[str, DomainPolicy] | None = None
) -> EdgePolicy:
    default = DomainPolicy(
        quota=Quota(rps=1, burst=2),
        cors=policy_from(["https://app.example.com"], credentials=True) if cors else None,
        security=SecurityHeaders(SecurityHeadersConfig()),
    )
    return EdgePolicy(
        default=default,
        domains=domains,
        limiter=RateLimiter(capacity=100),
        has_certificate=lambda h: h == "app.test",
        challenge_answer={"tok": "tok.thumb"}.get,
        https_port=443,
        clock=clock,
    )


PLAIN = ClientInfo(peer_ip="1.2.3.4", client_ip="1.2.3.4", tls=False)
TLS = ClientInfo(peer_ip="1.2.3.4", client_ip="1.2.3.4", tls=True)


def test_acme_answer_and_redirect_on_plain_http() -> None:
    clock = Clock()
    p = _policy(clock)
    answer = p.on_request(_head(b"/.well-known/acme-challenge/tok"), PLAIN)
    assert answer is not None and answer.status == 200 and answer.body == b"tok.thumb"
    missing = p.on_request(_head(b"/.well-known/acme-challenge/nope"), PLAIN)
    assert missing is not None and missing.status == 404
    redirect = p.on_request(_head(b"/a?b"), PLAIN)
    assert redirect is not None and redirect.status == 308
    assert dict(redirect.headers)[b"location"] == b"https://app.test/a?b"
    clock.now += 10  # burst 2 per client: let the bucket refill
    assert p.on_request(_head(b"/a", host="other.test"), PLAIN) is None
    assert p.on_request(_head(b"/a"), TLS) is None


def test_rate_limit_answer_and_per_domain_buckets() -> None:
    clock = Clock()
    special = DomainPolicy(
        quota=Quota(rps=1, burst=5, name="api.test"),
        cors=None,
        security=SecurityHeaders(SecurityHeadersConfig()),
        limit_key="|api.test",
    )
    p = _policy(clock, domains={"api.test": special})
    assert p.on_request(_head(), TLS) is None
    assert p.on_request(_head(), TLS) is None
    limited = p.on_request(_head(accept="application/json"), TLS)
    assert limited is not None and limited.status == 429
    headers = dict(limited.headers)
    assert headers[b"retry-after"] == b"1"
    assert headers[b"ratelimit-policy"] == b'"default";q=2;w=2'
    assert headers[b"ratelimit"].startswith(b'"default";r=0;t=')
    assert json.loads(limited.body)["status"] == 429
    # the override domain has its own, larger bucket for the same client
    assert [p.on_request(_head(host="api.test"), TLS) for _ in range(5)] == [None] * 5
    assert p.on_request(_head(host="api.test"), TLS) is not None
    clock.now += 1.0
    assert p.on_request(_head(), TLS) is None


def test_preflight_and_response_headers() -> None:
    p = _policy(Clock(), cors=True)
    p.known_hosts.add("app.test")
    pre = p.on_request(
        _head(
            method=b"OPTIONS", origin="https://app.example.com", access_control_request_method="PUT"
        ),
        TLS,
    )
    assert pre is not None and pre.status == 204
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"text/plain")]
    head = _head(origin="https://app.example.com")
    p.on_response(head, TLS, 200, headers)
    d = dict(headers)
    assert d[b"access-control-allow-origin"] == b"https://app.example.com"
    assert d[b"strict-transport-security"].startswith(b"max-age=")
    plain: list[tuple[bytes, bytes]] = []
    p.on_response(_head(host="x.test"), PLAIN, 200, plain)
    assert b"strict-transport-security" not in dict(plain)
    assert p.requests[("app.test", 200)] == 1 and p.requests[("other", 200)] == 1


def test_settings_defaults_and_errors() -> None:
    s = parse_settings(EdgeSettings)
    assert (s.port, s.https_port, s.admin_host, s.admin_port) == (8083, 8443, "127.0.0.1", 9083)
    assert s.rate_limit_rps == 1000 and s.burst == 2000
    assert s.max_connections_per_ip == 1024
    assert s.effective_tls_mode == "internal"
    with pytest.raises(SettingsError, match="LOAD_BALANCER_URL"):
        parse_settings(EdgeSettings, LOAD_BALANCER_URL="https://lb")
    with pytest.raises(SettingsError, match="RATE_LIMIT_RPS"):
        parse_settings(EdgeSettings, RATE_LIMIT_RPS=0)
    with pytest.raises(SettingsError, match="SSL_KEY_PATH"):
        parse_settings(EdgeSettings, SSL_CERT_PATH="/x.pem")
    with pytest.raises(SettingsError):
        parse_settings(EdgeSettings, EDGE_TLS_MODE="static")
    with pytest.raises(SettingsError, match="EDGE_TRUSTED_PROXIES"):
        parse_settings(EdgeSettings, EDGE_TRUSTED_PROXIES="10.0.0.0/8, nonsense")
    static = parse_settings(EdgeSettings, SSL_CERT_PATH="/c", SSL_KEY_PATH="/k")
    assert static.effective_tls_mode == "static"


def test_build_policy_validates_cors_and_overrides() -> None:
    s = parse_settings(EdgeSettings, EDGE_CORS_ORIGINS="*", EDGE_CORS_CREDENTIALS="true")
    with pytest.raises(ValueError, match="credentials"):
        build_policy(
            s,
            limiter=RateLimiter(),
            has_certificate=bool,
            challenge_answer=lambda t: None,
            https_port=1,
        )
    assert _domain_rate_limits("a.test=5:10, b.test=2", 1)["b.test"].burst == 4
    with pytest.raises(ValueError):
        _domain_rate_limits("nonsense", 1)
    assert _lb_address("http://10.0.0.1:8082") == "10.0.0.1:8082"
    assert _lb_address("http://lb") == "lb:80"


def test_connection_caps() -> None:
    caps = ConnectionCaps(per_ip=2, total=3)
    assert caps.acquire("a") and caps.acquire("a")
    assert not caps.acquire("a")
    assert caps.acquire("b")
    assert not caps.acquire("c")  # total reached
    caps.release("a")
    assert caps.acquire("c")
    assert caps.refused == 2


def test_connection_caps_exempt_trusted_proxies_from_the_per_address_cap() -> None:
    from zeitwork.proxy.headers import TrustedProxies, parse_networks

    caps = ConnectionCaps(per_ip=1, total=4, exempt=TrustedProxies(parse_networks("10.0.0.0/8")))
    assert all(caps.acquire("10.1.2.3") for _ in range(3))  # the load balancer in front
    assert caps.acquire("192.0.2.1") and not caps.acquire("192.0.2.1")  # a direct client: 1
    assert not caps.acquire("10.1.2.3")  # but the total still holds
    assert caps.refused == 2


def test_per_domain_policies_from_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "EDGE_DOMAIN_POLICIES",
        json.dumps(
            {
                "App.test": {
                    "cors": {"origins": ["https://*.app.test"], "credentials": True},
                    "headers": {
                        "frame_options": "DENY",
                        "content_security_policy": "default-src 'self'",
                        "hsts_max_age": 0,
                    },
                    "rate_limit": {"rps": 1, "burst": 1},
                },
                "plain.test": {"headers": {"referrer_policy": ""}},
            }
        ),
    )
    s = parse_settings(EdgeSettings, EDGE_CORS_ORIGINS="https://global.example")
    clock = Clock()
    p = build_policy(
        s,
        limiter=RateLimiter(),
        has_certificate=bool,
        challenge_answer=lambda t: None,
        https_port=443,
    )
    p._clock = clock  # type: ignore[attr-defined]
    headers: list[tuple[bytes, bytes]] = []
    p.on_response(_head(host="app.test", origin="https://x.app.test"), TLS, 200, headers)
    d = dict(headers)
    assert d[b"x-frame-options"] == b"DENY"
    assert d[b"content-security-policy"] == b"default-src 'self'"
    assert b"strict-transport-security" not in d
    assert d[b"access-control-allow-origin"] == b"https://x.app.test"
    assert d[b"access-control-allow-credentials"] == b"true"
    # other domains keep the global policy
    other: list[tuple[bytes, bytes]] = []
    p.on_response(_head(host="else.test", origin="https://x.app.test"), TLS, 200, other)
    assert b"access-control-allow-origin" not in dict(other)
    assert dict(other)[b"x-frame-options"] == b"SAMEORIGIN"
    quiet: list[tuple[bytes, bytes]] = []
    p.on_response(_head(host="plain.test"), TLS, 200, quiet)
    assert b"referrer-policy" not in dict(quiet) and b"x-content-type-options" in dict(quiet)
    # the domain's own rate limit (burst 1) in its own bucket
    assert p.on_request(_head(host="app.test"), TLS) is None
    assert p.on_request(_head(host="app.test"), TLS) is not None
    assert p.on_request(_head(host="else.test"), TLS) is None


def test_per_domain_policies_rejects_unknown_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_DOMAIN_POLICIES", '{"a.test": {"corz": {}}}')
    with pytest.raises(SettingsError, match="EDGE_DOMAIN_POLICIES"):
        parse_settings(EdgeSettings)
    monkeypatch.setenv("EDGE_DOMAIN_POLICIES", "not json")
    with pytest.raises(SettingsError, match="EDGE_DOMAIN_POLICIES"):
        parse_settings(EdgeSettings)


def test_redirects_are_rate_limited_but_challenges_are_not() -> None:
    p = _policy(Clock())
    assert [p.on_request(_head(b"/r"), PLAIN).status for _ in range(2)] == [308, 308]  # type: ignore[union-attr]
    limited = p.on_request(_head(b"/r"), PLAIN)
    assert limited is not None and limited.status == 429
    answer = p.on_request(_head(b"/.well-known/acme-challenge/tok"), PLAIN)
    assert answer is not None and answer.status == 200
