"""Who is calling: token scopes and the authenticated principal (pure, no I/O)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from zeitwork.wire.admin import Scope

__all__ = ["Principal", "Scope"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``token_id`` is None for ``ZEITWORK_ADMIN_TOKEN``."""

    scope: Scope
    token_id: uuid.UUID | None = None
    node_id: uuid.UUID | None = None

    @property
    def is_admin(self) -> bool:
        return self.scope is Scope.ADMIN

    def may_act_for_node(self, node_id: uuid.UUID) -> bool:
        """Admins act for any node; a node token only for its own node."""
        return self.is_admin or (self.scope is Scope.NODE and self.node_id == node_id)
