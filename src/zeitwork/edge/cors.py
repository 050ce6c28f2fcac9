"""CORS at the edge: which origins may read responses, and the answer to preflights.

Origins are exact (``https://app.example.com``, compared case-insensitively) or wildcards of
the form ``https://*.example.com`` (any sub-domain of ``example.com`` over that scheme, not
``example.com`` itself). ``*`` allows every origin but only without credentials: a policy
that would reflect an arbitrary origin with credentials is refused when it is built.

Every header value that does not depend on the request is computed once, here, when the
policy is built; per request the only work is one set lookup (or a few suffix checks) and,
for an allowed origin, echoing it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from zeitwork.core.web_policy import check_cors, parse_origin

Header = tuple[bytes, bytes]

DEFAULT_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_HOST_LABELS = re.compile(rb"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")

VARY_ORIGIN: Header = (b"vary", b"Origin")


@dataclass(frozen=True, slots=True)
class CorsConfig:
    origins: tuple[str, ...] = ()
    methods: tuple[str, ...] = DEFAULT_METHODS
    headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    credentials: bool = False
    max_age: int = 600


@dataclass(frozen=True, slots=True)
class Preflight:
    status: int
    headers: tuple[Header, ...]


def parse_list(value: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``."""
    return tuple(part.strip() for part in value.split(",") if part.strip())


class CorsPolicy:
    """Decides CORS headers for one domain (or the global default)."""

    __slots__ = (
        "_allow_any",
        "_exact",
        "_preflight_fixed",
        "_response_fixed",
        "_wildcards",
        "config",
    )

    def __init__(self, config: CorsConfig) -> None:
        self.config = config
        exact: set[bytes] = set()
        wildcards: list[tuple[bytes, bytes]] = []
        allow_any = False
        check_cors(config)
        for raw in config.origins:
            parsed = parse_origin(raw)
            if parsed is None:
                allow_any = True
                continue
            scheme, host, port = parsed
            if "*" in host:
                prefix = f"{scheme}://".encode()
                suffix = f"{host[1:]}{port}".encode()  # ".example.com[:port]"
                wildcards.append((prefix, suffix))
            else:
                exact.add(f"{scheme}://{host}{port}".encode())
        self._exact = frozenset(exact)
        self._wildcards = tuple(wildcards)
        self._allow_any = allow_any

        response: list[Header] = []
        if config.credentials:
            response.append((b"access-control-allow-credentials", b"true"))
        if config.expose_headers:
            response.append(
                (b"access-control-expose-headers", ", ".join(config.expose_headers).encode())
            )
        self._response_fixed = tuple(response)
        preflight: list[Header] = list(response)
        preflight.append(
            (b"access-control-allow-methods", ", ".join(m.upper() for m in config.methods).encode())
        )
        if config.headers:
            preflight.append((b"access-control-allow-headers", ", ".join(config.headers).encode()))
        preflight.append((b"access-control-max-age", str(config.max_age).encode()))
        self._preflight_fixed = tuple(preflight)

    @property
    def enabled(self) -> bool:
        return bool(self._exact or self._wildcards or self._allow_any)

    def allowed(self, origin: bytes) -> bool:
        origin = origin.lower()
        if origin in self._exact:
            return True
        for prefix, suffix in self._wildcards:
            if origin.startswith(prefix) and origin.endswith(suffix):
                label = origin[len(prefix) : len(origin) - len(suffix)]
                if label and _HOST_LABELS.match(label):
                    return True
        return self._allow_any

    def _allow_origin(self, origin: bytes) -> bytes:
        # With credentials the exact origin is echoed (it passed the list); without, and
        # when '*' is configured, the literal '*'.
        if self._allow_any and not self.config.credentials:
            return b"*"
        return origin

    def response_headers(self, origin: bytes | None) -> list[Header]:
        """Headers to add to an ordinary (non-preflight) response."""
        if origin is None or not self.allowed(origin):
            return [VARY_ORIGIN]
        return [
            (b"access-control-allow-origin", self._allow_origin(origin)),
            *self._response_fixed,
            VARY_ORIGIN,
        ]

    def is_preflight(
        self, method: bytes, origin: bytes | None, request_method: bytes | None
    ) -> bool:
        return method == b"OPTIONS" and origin is not None and request_method is not None

    def preflight(self, origin: bytes) -> Preflight:
        """The edge's own answer to an ``OPTIONS`` preflight from ``origin``."""
        if not self.allowed(origin):
            return Preflight(403, (VARY_ORIGIN,))
        return Preflight(
            204,
            (
                (b"access-control-allow-origin", self._allow_origin(origin)),
                *self._preflight_fixed,
                VARY_ORIGIN,
            ),
        )


def policy_from(
    origins: Iterable[str],
    *,
    methods: Iterable[str] = DEFAULT_METHODS,
    headers: Iterable[str] = (),
    expose_headers: Iterable[str] = (),
    credentials: bool = False,
    max_age: int = 600,
) -> CorsPolicy:
    return CorsPolicy(
        CorsConfig(
            origins=tuple(origins),
            methods=tuple(methods),
            headers=tuple(headers),
            expose_headers=tuple(expose_headers),
            credentials=credentials,
            max_age=max_age,
        )
    )
