"""Builds from source on the operator's API, shared by its handlers, ``clients.builds``, the
CLI and the builder.

Routes (``{project}`` is the project's id or slug):

- admin: ``POST /projects/{project}/builds`` (``BuildCreate``: a git source or an uploaded
  context's sha256) -> 201 ``BuildOut``; ``GET /builds?project=`` -> ``list[BuildOut]``;
  ``GET /builds/{id}`` -> ``BuildOut``; ``GET /builds/{id}/logs?after=&follow=`` -> text
  chunks (``BuildLogChunk``) or, with ``follow=true``, Server-Sent Events while it runs;
  ``POST /builds/{id}/cancel`` -> ``BuildOut``; ``PUT /build-contexts/{sha256}`` (the
  tarball as the body, streamed, size-limited, its sha256 verified) and ``HEAD`` to ask
  whether the operator has it.
- builder (``builder`` scope): ``POST /builder/lease`` (``LeaseRequest``) -> 200
  ``BuildJob`` or 204 when nothing is runnable; ``POST /builder/builds/{id}/renew``
  (``LeaseRef``) -> ``LeaseRenewed`` (409 when the lease is gone); ``POST
  /builder/builds/{id}/logs`` (``LogAppend``); ``POST /builder/builds/{id}/finish``
  (``BuildFinish``) -> ``BuildOut``; ``GET /builder/builds/{id}/context`` -> the tarball;
  ``POST /builder/builds/{id}/image`` (the image archive) -> ``ImportedImage``, or, when the
  job names ``push_to``, ``POST /builder/builds/{id}/pushed`` (``PushedImage``: the image
  the builder pushed to the platform registry) -> ``ImportedImage``; ``POST
  /builder/builds/{id}/release`` hands the job back.
- admin: ``PUT /projects/{project}/git-token`` (``GitTokenSet``) -> 204, ``DELETE`` -> 204:
  the token a builder uses for the project's private repositories.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SHA256_PATTERN = r"^[0-9a-f]{64}$"
COMMIT_PATTERN = r"^[0-9a-f]{40}([0-9a-f]{24})?$"
ENVIRONMENT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
REASON_PATTERN = r"^[a-z][a-z0-9_.-]{0,39}$"
MAX_LOG_CHUNK = 65536


class BuildState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_STATES = frozenset({BuildState.SUCCEEDED, BuildState.FAILED, BuildState.CANCELLED})

_REF_BAD = re.compile(r"(^-)|(\.\.)|([\x00-\x20\x7f~^:?*\[\\])|(@\{)|(^/)|(/$)|(\.lock$)")


def check_ref(value: str) -> str:
    """A git ref name as ``git check-ref-format`` would take it (and never an option)."""
    if not value or len(value) > 255 or _REF_BAD.search(value):
        raise ValueError("not a valid git ref name")
    return value


def check_git_url(value: str) -> str:
    """A repository URL the builder may clone: http(s), git or ssh; a local path,
    ``file:`` or ``ext::`` (the builder's own files, or a command) is refused, and so are
    credentials in the URL (they would show in logs)."""
    if len(value) > 2000 or any(c in value for c in "\x00\r\n\t ") or value.startswith("-"):
        raise ValueError("not a valid repository URL")
    match = re.match(r"^(https?|git|ssh)://([^/]+)", value)
    if match is None:
        raise ValueError("the repository URL must be http(s)://, git:// or ssh://")
    if match.group(1) != "ssh" and "@" in match.group(2):
        raise ValueError(
            "put no credentials in the repository URL; set the project's git token instead"
        )
    return value


def check_subpath(value: str) -> str:
    """A relative path inside the source (no ``..``, not absolute), normalised."""
    if value.startswith("/") or len(value) > 1000 or any(c in value for c in "\x00\r\n\\"):
        raise ValueError("must be a relative path inside the source, without '..'")
    parts = [p for p in value.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("must be a relative path inside the source, without '..'")
    return "/".join(parts)


class BuildSettings(BaseModel):
    """What, besides the source, decides the image (part of the build's cache key)."""

    model_config = ConfigDict(extra="forbid")

    dockerfile: str | None = Field(
        default=None, description="Dockerfile path inside the source (default Dockerfile)"
    )
    build_args: dict[str, str] = Field(default_factory=dict, max_length=100)

    @field_validator("dockerfile")
    @classmethod
    def _dockerfile(cls, value: str | None) -> str | None:
        return None if value is None else check_subpath(value) or None

    @field_validator("build_args")
    @classmethod
    def _args(cls, value: dict[str, str]) -> dict[str, str]:
        for key, arg in value.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$", key) or len(arg) > 4000:
                raise ValueError("build arg names are identifiers; values at most 4000 chars")
        return value


class GitSource(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="http(s)://, git:// or ssh:// repository URL")
    ref: str | None = Field(default=None, description="branch or tag (default: the project's)")
    commit: str | None = Field(default=None, pattern=COMMIT_PATTERN)
    path: str | None = Field(default=None, description="subdirectory to build")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_git_url(value)

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        return None if value is None else check_ref(value)

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else check_subpath(value) or None


class BuildCreate(BuildSettings):
    """Build from a git repository (``git``) or an uploaded context (``context``: its
    sha256, uploaded first with ``PUT /build-contexts/{sha256}``)."""

    environment: str = Field(default="production", pattern=ENVIRONMENT_PATTERN)
    git: GitSource | None = None
    context: str | None = Field(default=None, pattern=SHA256_PATTERN)
    port: int | None = Field(default=None, ge=1, le=65535)
    description: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _one_source(self) -> BuildCreate:
        if (self.git is None) == (self.context is None):
            raise ValueError("give exactly one source: git or context")
        return self


class BuildOut(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    project: str
    environment: str
    state: BuildState
    reason: str
    source_kind: Literal["dir", "git"]
    git_url: str | None = None
    git_ref: str | None = None
    git_commit: str | None = None
    git_path: str | None = None
    context_sha256: str | None = None
    dockerfile: str | None = None
    stack: str | None = None
    image_id: uuid.UUID | None = None
    release_id: uuid.UUID | None = None
    release_version: int | None = None
    reused_build_id: uuid.UUID | None = None
    error: str | None = None
    failed_step: str | None = None
    attempts: int = 0
    builder_version: str | None = None
    lease_owner: str | None = None
    cancel_requested: bool = False
    log_size: int = 0
    log_truncated: bool = False
    queued_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    durations: dict[str, float] = Field(default_factory=dict)
    created_by: str | None = None


class BuildLogChunk(BaseModel):
    seq: int
    at: datetime
    data: str


class ContextOut(BaseModel):
    sha256: str
    size: int
    created: bool


class LeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    owner: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@-]+$")
    builder_version: str = Field(default="", max_length=100)


class LeaseRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease_token: uuid.UUID


class RegistryPush(BaseModel):
    """Where a builder pushes the built image itself: ``repository`` (``host[:port]/repo``
    in the platform registry, the project's own) with the tag ``tag``; over plain HTTP when
    ``plain_http``. Only offered when the registry takes pushes without credentials: the
    operator's own never go to a builder."""

    repository: str
    tag: str
    plain_http: bool = False


class BuildJob(BaseModel):
    """A leased job, what the builder needs to run it. ``git_token`` is the project's
    private-repository token (plaintext, only in this answer to the builder)."""

    build: BuildOut
    lease_token: uuid.UUID
    lease_expires_at: datetime
    lease_seconds: float
    cache_key_settings: dict[str, object]
    git_token: str | None = None
    project_slug: str
    reuse_image_id: uuid.UUID | None = None
    push_to: RegistryPush | None = None
    """push the image there and tell the operator (``pushed``); None: upload the archive"""


class LeaseRenewed(BaseModel):
    lease_expires_at: datetime
    cancel_requested: bool


class LogAppend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease_token: uuid.UUID
    data: str = Field(max_length=MAX_LOG_CHUNK)


class BuildFinish(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lease_token: uuid.UUID
    state: Literal["succeeded", "failed", "cancelled"]
    image_id: uuid.UUID | None = None
    git_commit: str | None = Field(default=None, pattern=COMMIT_PATTERN)
    stack: str | None = Field(default=None, max_length=100)
    port: int | None = Field(default=None, ge=1, le=65535)
    error: str | None = Field(default=None, max_length=8000)
    failed_step: str | None = Field(default=None, max_length=2000)
    durations: dict[str, float] = Field(default_factory=dict, max_length=20)

    @model_validator(mode="after")
    def _image_on_success(self) -> BuildFinish:
        if self.state == "succeeded" and self.image_id is None:
            raise ValueError("a succeeded build names its image_id")
        return self


class ResolveRequest(BaseModel):
    """The builder resolved the ref: the commit it builds."""

    model_config = ConfigDict(extra="forbid")

    lease_token: uuid.UUID
    git_commit: str | None = Field(default=None, pattern=COMMIT_PATTERN)


class ResolveOut(BaseModel):
    cache_key: str
    reuse_image_id: uuid.UUID | None = None
    """an earlier successful build's image with the same commit and settings: reuse it"""


class PushedImage(BaseModel):
    """The image a builder pushed to ``push_to``: ``reference`` is
    ``host[:port]/repo:tag@sha256:<hex>`` (the digest ``buildah push --digestfile`` wrote)."""

    model_config = ConfigDict(extra="forbid")

    lease_token: uuid.UUID
    reference: str = Field(min_length=1, max_length=512)


class ImportedImage(BaseModel):
    id: uuid.UUID
    digest: str | None
    created: bool


class GitTokenSet(BaseModel):
    """A private repository's token for the project's builds (kept sealed with the
    operator's secrets key; only builders holding one of its jobs get it back)."""

    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=1, max_length=4000, pattern=r"^[\x21-\x7e]+$")
