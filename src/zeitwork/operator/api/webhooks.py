"""GitHub push webhooks: ``POST /webhooks/github/{project}`` builds a push to the project's
branch; ``POST /projects/{project}/webhook`` (admin) shows or rotates the secret.

The project is named in the URL (one URL per project, so several projects can follow one
repository, each with its own secret and branch); the payload's repository must be the
project's ``github_repo`` when that is set. The delivery is authenticated by its signature
only: a missing or wrong ``X-Hub-Signature-256``, an unknown project or one without a
secret all answer the same 401 and nothing is recorded. A verified delivery is recorded by
its ``X-GitHub-Delivery`` id first, so a redelivery answers ``duplicate`` and queues nothing.
The decision itself is ``zeitwork.builds.webhook.decide`` (pure).
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Path, Request, Response

from zeitwork.builds.webhook import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    Action,
    Decision,
    decide,
    verify_signature,
)
from zeitwork.core.errors import (
    AuthenticationRequired,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
)
from zeitwork.operator.api.security import require
from zeitwork.operator.db.projects import Project
from zeitwork.operator.deps import Deps
from zeitwork.operator.principal import Scope
from zeitwork.wire.builds import check_git_url
from zeitwork.wire.webhooks import (
    PROJECT_REF_PATTERN,
    WebhookAnswer,
    WebhookSecretOut,
    WebhookSecretRequest,
)

log = structlog.get_logger("zeitwork.operator.webhooks")

#: GitHub caps a payload at 25 MB; a push is far smaller unless it lists thousands of commits.
MAX_BODY_BYTES = 5 * 1024 * 1024
ENVIRONMENT = "production"
_DELIVERY = re.compile(r"[\x21-\x7e]{1,200}")
_EVENT = re.compile(r"[a-z0-9_.-]{1,100}")
_UNVERIFIED = (
    f"{SIGNATURE_HEADER} is missing or does not match this project's webhook secret "
    "(zeitwork apps webhook APP shows the URL and the secret)"
)

ProjectRef = Annotated[
    str,
    Path(pattern=PROJECT_REF_PATTERN, max_length=200, description="the project's id or slug"),
]


def webhook_path(project: Project) -> str:
    return f"/api/v1/webhooks/github/{project.slug}"


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"a webhook payload is at most {MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"a webhook payload is at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _payload(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(
            "the webhook payload is not JSON (set the webhook's content type to application/json)"
        ) from exc
    if not isinstance(payload, dict):
        raise InvalidInput("the webhook payload is not a JSON object")
    return payload


def router(deps: Deps) -> APIRouter:
    api = APIRouter(tags=["webhooks"])
    admin = require(deps, Scope.ADMIN)
    service = deps.build_service

    async def _verified_project(project: str, body: bytes, signature: str | None) -> Project:
        try:
            found = await deps.projects.project_by_ref(project)
            secret = await service.webhook_secret(found.id)
        except (NotFound, InvalidInput):
            secret = None
            found = None
        if (
            found is None
            or secret is None
            or not verify_signature(secret.encode(), body, signature)
        ):
            log.info("webhook.unverified", project=project[:100])
            raise AuthenticationRequired(_UNVERIFIED)
        return found

    @api.post(
        "/webhooks/github/{project}",
        response_model=WebhookAnswer,
        responses={
            202: {"model": WebhookAnswer, "description": "queued, ignored or a duplicate"},
            401: {"description": "signature missing or wrong; nothing recorded"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "security": [],  # the signature authenticates a delivery, not a bearer token
        },
    )
    async def github(project: ProjectRef, request: Request, response: Response) -> WebhookAnswer:
        """A GitHub delivery (content type ``application/json``): ``ping`` is answered,
        other events and other branches are ignored with the reason, a push to the
        project's branch queues a build of its ``after`` commit (released on success)."""
        body = await _body(request)
        found = await _verified_project(project, body, request.headers.get(SIGNATURE_HEADER))
        delivery = request.headers.get(DELIVERY_HEADER)
        if delivery is None or not _DELIVERY.fullmatch(delivery):
            raise InvalidInput(f"{DELIVERY_HEADER} is missing or not a delivery id")
        event_header = request.headers.get(EVENT_HEADER)
        event = event_header if event_header and _EVENT.fullmatch(event_header) else None
        payload = _payload(body)
        decision = decide(event, payload, found.default_branch)
        push = decision.push
        if (
            decision.action is Action.BUILD
            and push is not None
            and found.github_repo
            and (push.full_name or "").lower() != found.github_repo.lower()
        ):
            reason = (
                f"repository {push.full_name!r} is not the project's {found.github_repo!r}; ignored"
            )
            decision = Decision(Action.IGNORE, reason, push)
        clone_url: str | None = None
        if decision.action is Action.BUILD:
            assert push is not None  # decide sets push for every BUILD
            try:
                clone_url = check_git_url(push.clone_url or "")
            except ValueError as exc:
                raise InvalidInput(
                    f"the push payload's repository.clone_url: {exc}",
                    extra={"errors": [{"field": "repository.clone_url", "message": str(exc)}]},
                ) from exc
        if not await service.record_delivery(delivery, found.id, event=event):
            response.status_code = 202
            return WebhookAnswer(status="duplicate", reason="duplicate delivery")
        bound = {"project": found.slug, "delivery": delivery, "github_event": event}
        if decision.action is Action.PONG:
            log.info("webhook.ping", **bound)
            return WebhookAnswer(status="pong", reason="pong")
        response.status_code = 202
        if decision.action is Action.IGNORE:
            log.info("webhook.ignored", reason=decision.reason, **bound)
            return WebhookAnswer(status="ignored", reason=decision.reason)
        assert push is not None and clone_url is not None
        build = await service.enqueue(
            found,
            ENVIRONMENT,
            clone_url,
            push.branch,
            push.after,
            "webhook",
            created_by=f"github delivery {delivery}",
        )
        await service.delivery_built(delivery, build.id)
        log.info("webhook.queued", build_id=str(build.id), commit=push.after, **bound)
        return WebhookAnswer(
            status="queued", reason=decision.reason, build_id=build.id, commit=push.after
        )

    @api.post("/projects/{project}/webhook", dependencies=[Depends(admin)])
    async def webhook_secret(project: ProjectRef, body: WebhookSecretRequest) -> WebhookSecretOut:
        """The payload URL's path and the secret to paste into GitHub's webhook form
        (content type ``application/json``, the push event). The secret is made on first
        use; ``rotate`` replaces it (deliveries signed with the old one are refused)."""
        found = await deps.projects.project_by_ref(project)
        secret = None if body.rotate else await service.webhook_secret(found.id)
        created = secret is None
        if secret is None:
            secret = secrets.token_hex(32)
            await service.set_webhook_secret(found.id, secret)
            log.info("webhook.secret_set", project=found.slug, rotated=body.rotate)
        return WebhookSecretOut(
            project=found.slug,
            path=webhook_path(found),
            secret=secret,
            created=created,
            branch=found.default_branch,
        )

    return api
