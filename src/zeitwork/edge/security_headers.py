"""Security headers added to proxied responses.

``Strict-Transport-Security`` goes out on HTTPS only (over plain HTTP it is meaningless and
RFC 6797 says to ignore it). A header the application already set is kept, unless the
policy names it in ``override``. The header list is built once per policy; per response the
work is one pass over the response's header names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from zeitwork.core.web_policy import check_frame_options, check_header_value

Header = tuple[bytes, bytes]


@dataclass(frozen=True, slots=True)
class SecurityHeadersConfig:
    hsts_max_age: int = 31_536_000
    hsts_include_subdomains: bool = False
    hsts_preload: bool = False
    content_type_options: bool = True
    frame_options: str | None = "SAMEORIGIN"
    referrer_policy: str | None = "strict-origin-when-cross-origin"
    permissions_policy: str | None = "camera=(), microphone=(), geolocation=()"
    content_security_policy: str | None = None
    override: frozenset[str] = field(default_factory=frozenset)

    def merged(self, **changes: object) -> SecurityHeadersConfig:
        """A per-domain variant of the global configuration."""
        return replace(self, **changes)  # type: ignore[arg-type]


class SecurityHeaders:
    """Applies one security-header policy to response header lists in place."""

    __slots__ = ("_http", "_https", "_override", "_watched", "config")

    def __init__(self, config: SecurityHeadersConfig) -> None:
        self.config = config
        common: list[Header] = []
        if config.content_type_options:
            common.append((b"x-content-type-options", b"nosniff"))
        if config.frame_options is not None:
            common.append((b"x-frame-options", check_frame_options(config.frame_options).encode()))
        if config.referrer_policy:
            common.append(
                (b"referrer-policy", check_header_value("Referrer-Policy", config.referrer_policy))
            )
        if config.permissions_policy:
            common.append(
                (
                    b"permissions-policy",
                    check_header_value("Permissions-Policy", config.permissions_policy),
                )
            )
        if config.content_security_policy:
            common.append(
                (
                    b"content-security-policy",
                    check_header_value("Content-Security-Policy", config.content_security_policy),
                )
            )
        https = list(common)
        if config.hsts_max_age < 0:
            raise ValueError("HSTS max-age must not be negative")
        if config.hsts_max_age > 0:
            hsts = f"max-age={config.hsts_max_age}"
            if config.hsts_include_subdomains:
                hsts += "; includeSubDomains"
            if config.hsts_preload:
                hsts += "; preload"
            https.insert(0, (b"strict-transport-security", hsts.encode()))
        self._http = tuple(common)
        self._https = tuple(https)
        self._override = frozenset(name.lower().encode() for name in config.override)
        # names whose presence in a response needs a closer look: set by the policy (kept
        # if the app set them) or overridden (the app's value is dropped)
        self._watched = frozenset(name for name, _ in https) | self._override

    def headers_for(self, *, https: bool) -> tuple[Header, ...]:
        return self._https if https else self._http

    def apply(self, headers: list[Header], *, https: bool) -> None:
        """Add the policy's headers to ``headers`` (lower-case names, as the proxy core
        hands them over) in place."""
        policy = self._https if https else self._http
        if not policy:
            return
        watched = self._watched
        for name, _ in headers:
            if name in watched:
                break
        else:
            headers.extend(policy)  # the usual case: the app set none of them
            return
        override = self._override
        if override:
            headers[:] = [(n, v) for n, v in headers if n not in override]
        present = {name for name, _ in headers}
        for name, value in policy:
            if name not in present:
                headers.append((name, value))
