"""Builds from source: contexts, stack detection, base images, GitHub webhooks (pure parts).

The builder service and the operator's build queue use these; nothing here talks to the
database or the operator.
"""

from __future__ import annotations

from zeitwork.builds.base_images import BaseImageError, ensure, parse_overrides
from zeitwork.builds.context import ContextError, ContextInfo, ContextTooLarge, pack, unpack
from zeitwork.builds.detect import BuildPlan, DetectError, UnknownStack, detect, render_plan
from zeitwork.builds.webhook import (
    Action,
    Decision,
    PushEvent,
    WebhookPayloadError,
    decide,
    parse_push,
    verify_signature,
)

__all__ = [
    "Action",
    "BaseImageError",
    "BuildPlan",
    "ContextError",
    "ContextInfo",
    "ContextTooLarge",
    "Decision",
    "DetectError",
    "PushEvent",
    "UnknownStack",
    "WebhookPayloadError",
    "decide",
    "detect",
    "ensure",
    "pack",
    "parse_overrides",
    "parse_push",
    "render_plan",
    "unpack",
    "verify_signature",
]
