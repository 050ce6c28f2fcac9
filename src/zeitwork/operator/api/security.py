"""The FastAPI dependency that authenticates ``Authorization: Bearer`` and checks scope.

Use in a router: ``admin = require(deps, Scope.ADMIN)`` then either
``dependencies=[Depends(admin)]`` or a parameter ``principal: Principal = Depends(admin)``
(not ``Annotated[...]``: with postponed annotations FastAPI cannot resolve a local name).
The OpenAPI document declares the bearer scheme for every ``/api/v1`` operation
(``app.py``); the dependency reads the header itself, which is cheaper per request.
Admins pass every check. 401 without or with a bad token, 403 for a wrong scope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from fastapi import Request

from zeitwork.operator.auth import check_scope
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Principal, Scope


def require(deps: Deps, *scopes: Scope) -> Callable[..., Awaitable[Principal]]:
    allowed = frozenset(scopes)
    auth = deps.auth

    async def authenticated(request: Request) -> Principal:
        principal = await auth.authenticate(request.headers.get("authorization"))
        check_scope(principal, allowed)
        structlog.contextvars.bind_contextvars(
            scope=principal.scope.value,
            token_id=str(principal.token_id) if principal.token_id else None,
        )
        return principal

    return authenticated
