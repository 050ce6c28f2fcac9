"""Builds from source: contexts, stack detection, base images, GitHub webhooks (pure parts).

The builder service and the operator's build queue use these; nothing here talks to the
database or the network.
"""

from __future__ import annotations

from zeitwork.builds.context import ContextError, ContextInfo, ContextTooLarge, pack, unpack

__all__ = ["ContextError", "ContextInfo", "ContextTooLarge", "pack", "unpack"]
