"""GitHub push webhooks on the operator's API, shared by its handlers, the admin client and
the CLI.

Routes (``{project}`` is the project's id or slug):

- GitHub (no token; the ``X-Hub-Signature-256`` HMAC of the body with the project's webhook
  secret is the authentication): ``POST /webhooks/github/{project}`` -> 200
  ``WebhookAnswer`` (``pong``) or 202 (``queued``, ``ignored``, ``duplicate``); 401 when
  the signature is missing or wrong (nothing recorded or queued).
- admin: ``POST /projects/{project}/webhook`` (``WebhookSecretRequest``) -> the URL path
  and the secret to paste into GitHub (``WebhookSecretOut``), made on first use, replaced
  with ``rotate``.
"""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PROJECT_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"


class WebhookAnswer(BaseModel):
    """What the operator did with one delivery (GitHub shows it in the delivery's log)."""

    status: Literal["pong", "queued", "ignored", "duplicate"]
    reason: str
    build_id: uuid.UUID | None = None
    commit: str | None = None


class WebhookSecretRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rotate: bool = Field(default=False, description="replace the secret with a new one")


class WebhookSecretOut(BaseModel):
    project: str
    path: str = Field(description="the payload URL's path on the operator")
    secret: str = Field(description="the webhook secret to paste into GitHub")
    created: bool = Field(description="true when this call made the secret")
    branch: str = Field(description="the branch whose pushes are built")
