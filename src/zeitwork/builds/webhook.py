"""GitHub push webhooks, without I/O: the signature check, the push payload, the decision.

GitHub signs each delivery's raw body with the webhook's secret (HMAC-SHA256) and sends
``X-Hub-Signature-256: sha256=<hex>``. ``decide`` turns an event name and its payload into
what the operator does with it: answer a ``ping``, ignore it (with the reason, which GitHub
shows in its delivery log), or build the pushed commit.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from zeitwork.core.errors import InvalidInput

SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"
SIGNATURE_PREFIX = "sha256="
BRANCH_PREFIX = "refs/heads/"
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_ZERO = re.compile(r"0{40}|0{64}")


class WebhookPayloadError(InvalidInput):
    """A signed delivery whose payload is not the push event it claims to be."""


class Action(enum.StrEnum):
    PONG = "pong"
    IGNORE = "ignore"
    BUILD = "build"


@dataclass(frozen=True)
class PushEvent:
    """The parts of a GitHub ``push`` payload a build needs."""

    ref: str
    after: str
    deleted: bool
    clone_url: str | None
    full_name: str | None

    @property
    def branch(self) -> str | None:
        """The branch name for ``refs/heads/...``; None for tags and other refs."""
        if self.ref.startswith(BRANCH_PREFIX):
            return self.ref.removeprefix(BRANCH_PREFIX)
        return None


@dataclass(frozen=True)
class Decision:
    """What to do with one delivery; ``commit`` and ``push`` are set for ``BUILD``."""

    action: Action
    reason: str
    push: PushEvent | None = None

    @property
    def commit(self) -> str | None:
        return self.push.after if self.push is not None and self.action is Action.BUILD else None


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub sends for ``body``."""
    return SIGNATURE_PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None) -> bool:
    """True when ``header`` is ``sha256=`` and the HMAC-SHA256 of ``body`` under ``secret``.

    The comparison is constant-time; an empty secret never verifies.
    """
    if not secret or header is None or not header.startswith(SIGNATURE_PREFIX):
        return False
    expected = sign(secret, body).encode("ascii")
    try:
        given = header.strip().lower().encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected, given)


def parse_push(payload: Mapping[str, Any]) -> PushEvent:
    """The push event in ``payload``; ``WebhookPayloadError`` naming the field that is wrong."""
    ref = payload.get("ref")
    if not isinstance(ref, str) or not ref:
        raise WebhookPayloadError("the push payload has no 'ref'")
    after = payload.get("after")
    if not isinstance(after, str) or not _COMMIT.fullmatch(after):
        raise WebhookPayloadError("the push payload's 'after' is not a commit id")
    deleted_field = payload.get("deleted", False)
    if not isinstance(deleted_field, bool):
        raise WebhookPayloadError("the push payload's 'deleted' is not a boolean")
    repository = payload.get("repository")
    if repository is not None and not isinstance(repository, Mapping):
        raise WebhookPayloadError("the push payload's 'repository' is not an object")
    repository = repository or {}
    return PushEvent(
        ref=ref,
        after=after,
        deleted=deleted_field or bool(_ZERO.fullmatch(after)),
        clone_url=_optional_str(repository, "clone_url"),
        full_name=_optional_str(repository, "full_name"),
    )


def _optional_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise WebhookPayloadError(f"the push payload's 'repository.{key}' is not a string")
    return value


def decide(event_name: str | None, payload: Mapping[str, Any], project_branch: str) -> Decision:
    """What a verified delivery asks for.

    ``ping`` is answered; any event but ``push`` is ignored; a push to a tag, to another
    branch than ``project_branch`` or deleting the branch is ignored; a push to the branch
    builds its ``after`` commit. Raises ``WebhookPayloadError`` for a malformed push.
    """
    if event_name == "ping":
        return Decision(Action.PONG, "pong")
    if event_name != "push":
        shown = event_name if event_name else "(none)"
        return Decision(Action.IGNORE, f"event {shown!r} is not a push; ignored")
    push = parse_push(payload)
    branch = push.branch
    if branch is None:
        return Decision(Action.IGNORE, f"{push.ref!r} is not a branch; ignored", push)
    if branch != project_branch:
        return Decision(
            Action.IGNORE,
            f"push to branch {branch!r}, the project builds {project_branch!r}; ignored",
            push,
        )
    if push.deleted:
        return Decision(Action.IGNORE, f"branch {branch!r} was deleted; ignored", push)
    return Decision(Action.BUILD, f"push to {branch!r}: building {push.after}", push)
