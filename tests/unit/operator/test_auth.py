"""Token parsing, scope checks and the token cache, with a fake store and clock."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from zeitwork.core.clock import FakeClock
from zeitwork.core.errors import AuthenticationRequired, PermissionDenied
from zeitwork.operator.auth import (
    Authenticator,
    bearer_token,
    check_scope,
    display_prefix,
    hash_token,
    new_secret,
)
from zeitwork.operator.db.tokens import Token, TokenStore
from zeitwork.operator.principal import Principal, Scope


@dataclass
class FakeTokens:
    """Stands in for TokenStore.lookup; counts database round trips."""

    tokens: dict[str, Token] = field(default_factory=dict)
    lookups: int = 0

    async def lookup(self, token_hash: str, **_: Any) -> Token | None:
        self.lookups += 1
        return self.tokens.get(token_hash)

    def add(self, secret: str, scope: Scope, node_id: uuid.UUID | None = None) -> Token:
        token = Token(
            id=uuid.uuid4(),
            name="",
            scope=scope,
            prefix=display_prefix(secret),
            node_id=node_id,
            created_at=datetime.now(UTC),
            last_used_at=None,
            expires_at=None,
            revoked_at=None,
        )
        self.tokens[hash_token(secret)] = token
        return token


def make(ttl: float = 5.0, admin: str | None = None) -> tuple[Authenticator, FakeTokens, FakeClock]:
    store = FakeTokens()
    clock = FakeClock()
    auth = Authenticator(
        tokens=cast(TokenStore, store), clock=clock, admin_token=admin, cache_seconds=ttl
    )
    return auth, store, clock


def test_secrets_are_random_and_long() -> None:
    secrets = {new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(s.startswith("zw_") and len(s) >= 43 for s in secrets)
    assert len(hash_token("x")) == 64


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer abc", "abc"), ("  Bearer   abc  ", "abc")],
)
def test_bearer_token(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc", "abc"])
def test_bad_authorization_header(header: str | None) -> None:
    with pytest.raises(AuthenticationRequired):
        bearer_token(header)


@pytest.mark.parametrize("scope", list(Scope))
@pytest.mark.parametrize("allowed", [frozenset(), {Scope.JOIN}, {Scope.NODE, Scope.PROXY}])
def test_check_scope(scope: Scope, allowed: set[Scope]) -> None:
    principal = Principal(scope=scope)
    if scope is Scope.ADMIN or scope in allowed:
        assert check_scope(principal, allowed) is principal
    else:
        with pytest.raises(PermissionDenied):
            check_scope(principal, allowed)


def test_node_principal_acts_only_for_its_node() -> None:
    mine, other = uuid.uuid4(), uuid.uuid4()
    node = Principal(scope=Scope.NODE, node_id=mine)
    assert node.may_act_for_node(mine)
    assert not node.may_act_for_node(other)
    assert Principal(scope=Scope.ADMIN).may_act_for_node(other)
    assert not Principal(scope=Scope.JOIN).may_act_for_node(mine)


async def test_env_admin_token_needs_no_lookup() -> None:
    auth, store, _clock = make(admin="zw_env")
    principal = await auth.authenticate("Bearer zw_env")
    assert principal.scope is Scope.ADMIN
    assert store.lookups == 0


async def test_cache_hits_misses_and_expiry() -> None:
    auth, store, clock = make(ttl=5)
    node_id = uuid.uuid4()
    store.add("zw_node", Scope.NODE, node_id)
    for _ in range(10):
        principal = await auth.authenticate("Bearer zw_node")
    assert (principal.scope, principal.node_id) == (Scope.NODE, node_id)
    assert store.lookups == 1
    clock.advance(5.1)
    await auth.authenticate("Bearer zw_node")
    assert store.lookups == 2
    # unknown tokens are cached too (no database hammering), and still refused
    for _ in range(3):
        with pytest.raises(AuthenticationRequired):
            await auth.authenticate("Bearer zw_nope")
    assert store.lookups == 3


async def test_forget_evicts_at_once() -> None:
    auth, store, _clock = make(ttl=60)
    store.add("zw_a", Scope.ADMIN)
    await auth.authenticate("Bearer zw_a")
    del store.tokens[hash_token("zw_a")]  # revoked in the database
    await auth.authenticate("Bearer zw_a")  # still cached
    auth.forget([hash_token("zw_a")])
    with pytest.raises(AuthenticationRequired):
        await auth.authenticate("Bearer zw_a")


async def test_zero_ttl_disables_the_cache() -> None:
    auth, store, _clock = make(ttl=0)
    store.add("zw_a", Scope.PROXY)
    for _ in range(3):
        await auth.authenticate("Bearer zw_a")
    assert store.lookups == 3
