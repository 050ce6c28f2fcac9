"""Bearer-token authentication: token secrets, their hashes, and the in-process cache.

Tokens are ``zw_`` + 43 URL-safe random characters (256 bits); only their sha256 is
stored. A lookup result (hit or miss) is cached for ``cache_seconds`` keyed by the hash, so
a busy client costs one database round trip per TTL, not per request. Revocation in this
process evicts at once (``forget``); other operator processes notice within the TTL.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from zeitwork.core.clock import Clock
from zeitwork.core.errors import AuthenticationRequired, PermissionDenied
from zeitwork.operator.db.tokens import TokenStore
from zeitwork.operator.principal import Principal, Scope

TOKEN_PREFIX = "zw_"  # noqa: S105 (a marker, not a secret)
_MAX_CACHE = 10_000


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """The part of a token that may be shown later to recognise it (``zw_abcd1234``)."""
    return secret[: len(TOKEN_PREFIX) + 8]


def bearer_token(authorization: str | None) -> str:
    """The token in an ``Authorization: Bearer ...`` header, or AuthenticationRequired."""
    if not authorization:
        raise AuthenticationRequired(
            "this endpoint needs an 'Authorization: Bearer <token>' header"
        )
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationRequired("the Authorization header must be 'Bearer <token>'")
    return token


def check_scope(principal: Principal, allowed: Iterable[Scope]) -> Principal:
    """Admins pass everywhere; others need one of ``allowed``, else PermissionDenied."""
    allowed = frozenset(allowed)
    if principal.is_admin or principal.scope in allowed:
        return principal
    names = ", ".join(sorted(s.value for s in allowed | {Scope.ADMIN}))
    raise PermissionDenied(
        f"a {principal.scope.value} token may not do this; it needs scope {names}",
        extra={"scope": principal.scope.value},
    )


class Authenticator:
    def __init__(
        self,
        *,
        tokens: TokenStore,
        clock: Clock,
        admin_token: str | None = None,
        cache_seconds: float = 5.0,
    ) -> None:
        self._tokens = tokens
        self._clock = clock
        self._admin_hash = hash_token(admin_token) if admin_token else None
        self._ttl = cache_seconds
        self._cache: dict[str, tuple[Principal | None, float]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        digest = hash_token(bearer_token(authorization))
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return Principal(scope=Scope.ADMIN)
        now = self._clock.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            principal = cached[0]
        else:
            token = await self._tokens.lookup(digest)
            principal = (
                None
                if token is None
                else Principal(scope=token.scope, token_id=token.id, node_id=token.node_id)
            )
            if self._ttl > 0:
                if len(self._cache) >= _MAX_CACHE:
                    self._cache.clear()
                self._cache[digest] = (principal, now + self._ttl)
        if principal is None:
            raise AuthenticationRequired("the token is unknown, expired or revoked")
        return principal

    def forget(self, hashes: Iterable[str]) -> None:
        """Evict revoked tokens from the cache (call after the revoking commit)."""
        for digest in hashes:
            self._cache.pop(digest, None)
