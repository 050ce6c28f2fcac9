"""The FastAPI dependency that authenticates ``Authorization: Bearer`` and checks scope.

Use in a router: ``admin = require(deps, Scope.ADMIN)`` then either
``dependencies=[Depends(admin)]`` or a parameter ``principal: Principal = Depends(admin)``
(not ``Annotated[...]``: with postponed annotations FastAPI cannot resolve a local name).
The OpenAPI document declares the bearer scheme for every ``/api/v1`` operation
(``app.py``); the dependency reads the header itself, which is cheaper per request.
Admins pass every check. 401 without or with a bad token, 403 for a wrong scope.
A GET without the header may carry the web console's session cookie instead (its pages'
event and log streams: ``EventSource`` cannot send headers).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from fastapi import Request

from zeitwork.operator.auth import check_scope
from zeitwork.operator.console import console_authorization
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Principal, Scope


def require(deps: Deps, *scopes: Scope) -> Callable[..., Awaitable[Principal]]:
    allowed = frozenset(scopes)
    auth = deps.auth

    async def authenticated(request: Request) -> Principal:
        authorization = request.headers.get("authorization")
        if authorization is None:  # the console's pages and streams: its session cookie
            authorization = console_authorization(request.method, request.cookies)
        principal = await auth.authenticate(authorization)
        check_scope(principal, allowed)
        structlog.contextvars.bind_contextvars(
            scope=principal.scope.value,
            token_id=str(principal.token_id) if principal.token_id else None,
        )
        return principal

    return authenticated
