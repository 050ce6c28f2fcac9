"""Build use cases: queue a build (git or an uploaded context), store contexts, the builder's
side of the queue (lease, renew, logs, resolve, finish), cancel, follow logs, and on success
a release of the built image in the build's environment.

Rules (the SQL is in ``db.builds``):

- A new build cancels the older queued builds of the same project, environment and ref.
- A build whose ``cache_key`` (the commit or context and the build settings, ``cache_key``)
  already built successfully in the project is not run again: it succeeds at once with
  that build's image (``reused_build_id``), at enqueue when the commit is known, else when
  the builder reports the commit it resolved the ref to.
- Success, then a release: the build commits first; the release is made through
  ``ReleaseService.deploy`` (its own transaction). A refused release (no capacity, ...)
  leaves the build ``succeeded`` with the refusal in ``error`` and a ``build.release_failed``
  event; the current release keeps serving.
- Events: ``build.queued``, ``build.started``, ``build.succeeded``, ``build.failed``,
  ``build.cancelled``, ``build.release_failed``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from zeitwork.builds.context import unpack
from zeitwork.core.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, ZeitworkError
from zeitwork.core.files import PendingFile
from zeitwork.operator.db import events
from zeitwork.operator.db.builds import BUILDS, Build, BuildContext, BuildStore, LogChunk, NewBuild
from zeitwork.operator.db.database import Database
from zeitwork.operator.db.projects import Project, ProjectStore
from zeitwork.operator.db.releases import ReleaseStore
from zeitwork.operator.secret_box import SecretBox
from zeitwork.operator.services.releases import ReleaseService
from zeitwork.operator.services.watch import Watcher
from zeitwork.wire.builds import (
    FINISHED_STATES,
    BuildCreate,
    BuildState,
    check_git_url,
    check_ref,
    check_subpath,
)
from zeitwork.wire.releases import ReleaseCreate

log = structlog.get_logger("zeitwork.operator.builds")

DEFAULT_LEASE_SECONDS = 30.0
_CHUNK = 1 << 16


def cache_key(
    *,
    source: str,
    git_path: str | None,
    dockerfile: str | None,
    build_args: dict[str, str],
) -> str:
    """sha256 of what decides the image: the source (``git:<commit>`` or
    ``context:<sha256>``), the subdirectory, the Dockerfile and the build args (pure)."""
    settings = {
        "source": source,
        "path": git_path or "",
        "dockerfile": dockerfile or "",
        "build_args": dict(sorted(build_args.items())),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def source_of(build: Build | NewBuild, commit: str | None = None) -> str | None:
    """The cache key's source part, or None while a git build's commit is unknown (pure)."""
    if build.source_kind == "dir":
        return f"context:{build.context_sha256}"
    commit = commit or build.git_commit
    return None if commit is None else f"git:{commit}"


def key_of(build: Build | NewBuild, commit: str | None = None) -> str | None:
    source = source_of(build, commit)
    if source is None:
        return None
    return cache_key(
        source=source,
        git_path=build.git_path,
        dockerfile=build.dockerfile,
        build_args=build.build_args,
    )


@dataclass(frozen=True, slots=True)
class Leased:
    build: Build
    git_token: str | None
    """the project's private-repository token, opened (only handed to the builder)"""
    reuse_image_id: uuid.UUID | None


class BuildService:
    def __init__(
        self,
        *,
        db: Database,
        store: BuildStore,
        projects: ProjectStore,
        releases: ReleaseStore,
        release_service: ReleaseService,
        box: SecretBox,
        watcher: Watcher,
        stopping: asyncio.Event,
        contexts_dir: Path,
        context_max_bytes: int,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self._db = db
        self._store = store
        self._projects = projects
        self._releases = releases
        self._release_service = release_service
        self._box = box
        self._watcher = watcher
        self._stopping = stopping
        self._contexts = contexts_dir
        self._context_max = context_max_bytes
        self.lease_seconds = lease_seconds

    @property
    def store(self) -> BuildStore:
        return self._store

    @property
    def context_max_bytes(self) -> int:
        return self._context_max

    # -- queueing --------------------------------------------------------------------------

    async def _project(self, project: Project | uuid.UUID | str) -> Project:
        if isinstance(project, Project):
            return project
        if isinstance(project, uuid.UUID):
            return await self._projects.get_project(project)
        return await self._projects.project_by_ref(project)

    async def enqueue(  # noqa: PLR0917 - the webhook's call names its six facts in order
        self,
        project: Project | uuid.UUID | str,
        environment: str,
        git_url: str,
        ref: str | None,
        commit: str | None,
        reason: str = "deploy",
        *,
        path: str | None = None,
        dockerfile: str | None = None,
        build_args: dict[str, str] | None = None,
        port: int | None = None,
        created_by: str | None = None,
    ) -> Build:
        """Queue a build of a git repository at ``ref`` (default: the project's branch), or
        exactly ``commit`` when known (a webhook's ``after``). Returns the build row (already
        ``succeeded`` when that commit and these settings built before)."""
        proj = await self._project(project)
        try:
            url = check_git_url(git_url)
            checked_ref = check_ref(ref or proj.default_branch)
            sub = check_subpath(path) or None if path else None
            docker = check_subpath(dockerfile) or None if dockerfile else None
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        if commit is not None and (
            len(commit) not in (40, 64) or any(c not in "0123456789abcdef" for c in commit)
        ):
            raise InvalidInput("commit must be a full hexadecimal commit id")
        return await self._enqueue(
            proj,
            environment,
            NewBuild(
                project_id=proj.id,
                project_environment_id=uuid.UUID(int=0),  # set in _enqueue
                source_kind="git",
                reason=reason,
                created_by=created_by,
                git_url=url,
                git_ref=checked_ref,
                git_commit=commit,
                git_path=sub,
                dockerfile=docker,
                build_args=dict(build_args or {}),
                port=port,
            ),
        )

    async def create(self, project_ref: str, body: BuildCreate, *, created_by: str | None) -> Build:
        """The API's ``POST /projects/{project}/builds``."""
        proj = await self._project(project_ref)
        if body.git is not None:
            return await self.enqueue(
                proj,
                body.environment,
                body.git.url,
                body.git.ref,
                body.git.commit,
                "deploy",
                path=body.git.path,
                dockerfile=body.dockerfile,
                build_args=body.build_args,
                port=body.port,
                created_by=created_by,
            )
        assert body.context is not None  # BuildCreate checks exactly one source
        if await self._store.context(body.context) is None:
            raise InvalidInput(
                f"no build context {body.context}; upload it first with "
                f"PUT /api/v1/build-contexts/{body.context}",
                extra={"errors": [{"field": "context", "message": "not uploaded"}]},
            )
        return await self._enqueue(
            proj,
            body.environment,
            NewBuild(
                project_id=proj.id,
                project_environment_id=uuid.UUID(int=0),
                source_kind="dir",
                reason="deploy",
                created_by=created_by,
                context_sha256=body.context,
                dockerfile=body.dockerfile,
                build_args=dict(body.build_args),
                port=body.port,
            ),
        )

    async def _enqueue(self, project: Project, environment: str, new: NewBuild) -> Build:
        key = key_of(new)
        async with self._db.transaction() as tx:
            env = await self._releases.environment(project.id, environment, create=True, conn=tx)
            draft = dataclasses.replace(new, project_environment_id=env.id, cache_key=key)
            build = await self._store.insert(draft, conn=tx)
            earlier = None
            if key is not None:  # built before: succeeds in this transaction, no builder
                earlier = await self._store.succeeded_with_key(key, project_id=project.id, conn=tx)
            if earlier is not None and earlier.image_id is not None:
                reused = await self._store.finish(
                    build.id,
                    None,
                    state=BuildState.SUCCEEDED,
                    image_id=earlier.image_id,
                    stack=earlier.stack,
                    port=build.port or earlier.port,
                    reused_build_id=earlier.id,
                    durations={"total": 0.0},
                    conn=tx,
                )
                assert reused is not None  # queued in this transaction: nobody holds it
                build = reused
            superseded = await self._store.supersede_queued(build, conn=tx)
            await events.record(
                tx,
                "build.queued",
                f"build {build.id} of {_source_text(build)} queued",
                project_id=project.id,
                project_environment_id=env.id,
                data={"build_id": str(build.id), "superseded": [str(i) for i in superseded]},
            )
        log.info(
            "build.queued",
            build_id=str(build.id),
            project=project.slug,
            source=build.source_kind,
            superseded=len(superseded),
            reused=None if earlier is None else str(earlier.id),
        )
        if build.state is BuildState.SUCCEEDED:
            return await self._succeeded(build, skipped=True)
        return build

    async def record_delivery(
        self, delivery_id: str, project_id: uuid.UUID | None, *, event: str | None = None
    ) -> bool:
        """True the first time a webhook delivery id is seen, False for a redelivery."""
        return await self._store.record_delivery(delivery_id, project_id, event=event)

    async def delivery_built(self, delivery_id: str, build_id: uuid.UUID) -> None:
        await self._store.delivery_built(delivery_id, build_id)

    # -- project secrets (webhook secret, git token), sealed like secret env vars ----------

    async def set_git_token(self, project: uuid.UUID, token: str | None) -> None:
        sealed = None if token is None else self._box.seal(token)
        await self._store.set_project_secret(project, "git_token", sealed)

    async def set_webhook_secret(self, project: uuid.UUID, secret: str | None) -> None:
        sealed = None if secret is None else self._box.seal(secret)
        await self._store.set_project_secret(project, "webhook_secret", sealed)

    async def webhook_secret(self, project: uuid.UUID) -> str | None:
        sealed, _ = await self._store.project_secrets(project)
        return None if sealed is None else self._box.open(sealed)

    # -- contexts --------------------------------------------------------------------------

    async def context(self, sha256: str) -> BuildContext | None:
        return await self._store.context(sha256)

    async def put_context(
        self, sha256: str, body: AsyncIterable[bytes], *, declared: int | None
    ) -> tuple[BuildContext, bool]:
        """Store an uploaded context: streamed to a temporary file, counted (413 past the
        limit), hashed (422 unless it is ``sha256``), checked as a safe archive (422 for
        ``..``, absolute names, devices, links out), then renamed into place."""
        existing = await self._store.context(sha256)
        if existing is not None and await asyncio.to_thread(Path(existing.path).is_file):
            async for _chunk in body:  # drain: the client sent it anyway
                pass
            return existing, False
        limit = self._context_max
        if declared is not None and declared > limit:
            raise _too_large(declared, limit)
        await asyncio.to_thread(self._contexts.mkdir, parents=True, exist_ok=True)
        final = self._contexts / f"{sha256}.tar"
        digest = hashlib.sha256()
        size = 0
        # 0600 and fsynced once in place (in a thread): the row added below points at it
        async with PendingFile(final, mode=0o600) as pending:
            with pending.open() as out:
                async for chunk in body:
                    size += len(chunk)
                    if size > limit:
                        raise _too_large(size, limit)
                    digest.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
            if digest.hexdigest() != sha256:
                raise InvalidInput(
                    f"the uploaded context's sha256 is {digest.hexdigest()}, not {sha256}",
                    extra={"errors": [{"field": "sha256", "message": "does not match"}]},
                )
            await asyncio.to_thread(_check_archive, pending.temp, limit)
        found, created = await self._store.add_context(sha256, size=size, path=str(final))
        log.info("build.context_stored", sha256=sha256, size=size, created=created)
        return found, created

    async def context_path(self, build_id: uuid.UUID, token: uuid.UUID) -> Path:
        build = await self._store.get(build_id)
        if build.lease_token != token or build.state is not BuildState.RUNNING:
            raise Conflict("this lease is not held any more", extra={"build_id": str(build_id)})
        if build.context_sha256 is None:
            raise NotFound(f"build {build_id} has no uploaded context (it builds from git)")
        found = await self._store.context(build.context_sha256)
        if found is None or not await asyncio.to_thread(Path(found.path).is_file):
            raise NotFound(f"the context {build.context_sha256} is not stored any more")
        return Path(found.path)

    # -- the builder's side ----------------------------------------------------------------

    async def lease(self, *, owner: str, builder_version: str) -> Leased | None:
        for gone in await self._store.expire_exhausted():
            await self._record_final(gone)
        build = await self._store.lease(
            owner=owner, builder_version=builder_version, seconds=self.lease_seconds
        )
        if build is None:
            return None
        async with self._db.connection() as conn:
            await events.record(
                conn,
                "build.started",
                f"build {build.id} started on {owner} (attempt {build.attempts})",
                project_id=build.project_id,
                project_environment_id=build.project_environment_id,
                data={"build_id": str(build.id), "builder": owner, "attempt": build.attempts},
            )
        _, sealed = await self._store.project_secrets(build.project_id)
        token = None if sealed is None else self._box.open(sealed)
        reuse = None
        if build.cache_key is not None:
            earlier = await self._store.succeeded_with_key(
                build.cache_key, project_id=build.project_id
            )
            reuse = None if earlier is None else earlier.image_id
        log.info("build.leased", build_id=str(build.id), owner=owner, attempt=build.attempts)
        return Leased(build=build, git_token=token, reuse_image_id=reuse)

    async def wait_for_work(self, known: int | None, wait: float) -> int:
        """Long-poll helper for idle builders: returns the builds topic's version."""
        return await self._watcher.wait_change(BUILDS, known, wait)

    async def renew(self, build_id: uuid.UUID, token: uuid.UUID) -> Build:
        build = await self._store.renew(build_id, token, seconds=self.lease_seconds)
        if build is None:
            raise _lease_lost(build_id)
        return build

    async def give_up(self, build_id: uuid.UUID, token: uuid.UUID) -> Build:
        build = await self._store.give_up(build_id, token)
        if build is None:
            raise _lease_lost(build_id)
        log.info("build.given_up", build_id=str(build_id))
        return build

    async def append_log(self, build_id: uuid.UUID, token: uuid.UUID, data: str) -> Build:
        build = await self._store.append_log(build_id, token, data)
        if build is None:
            raise _lease_lost(build_id)
        return build

    async def resolved(
        self, build_id: uuid.UUID, token: uuid.UUID, commit: str | None
    ) -> tuple[Build, uuid.UUID | None]:
        """The builder resolved the ref to ``commit``: record it and the cache key; the
        image of an earlier build with that key, to reuse (the builder then finishes)."""
        build = await self._store.get(build_id)
        key = key_of(build, commit)
        if key is None:
            raise InvalidInput("a git build's commit is needed to resolve it")
        updated = await self._store.resolved(build_id, token, git_commit=commit, cache_key=key)
        if updated is None:
            raise _lease_lost(build_id)
        earlier = await self._store.succeeded_with_key(key, project_id=build.project_id)
        if earlier is not None and earlier.id == build.id:
            earlier = None
        return updated, None if earlier is None else earlier.image_id

    async def finish(
        self,
        build_id: uuid.UUID,
        token: uuid.UUID,
        *,
        state: BuildState,
        image_id: uuid.UUID | None = None,
        git_commit: str | None = None,
        stack: str | None = None,
        port: int | None = None,
        error: str | None = None,
        failed_step: str | None = None,
        durations: dict[str, float] | None = None,
    ) -> Build:
        """Finish under the lease (exactly once). Repeating the same finish with the same
        token after it went through answers the finished build (a retried request)."""
        if state not in FINISHED_STATES:
            raise InvalidInput("a build finishes succeeded, failed or cancelled")
        reused: uuid.UUID | None = None
        if state is BuildState.SUCCEEDED and image_id is not None:
            current = await self._store.get(build_id)
            if current.cache_key is not None:
                earlier = await self._store.succeeded_with_key(
                    current.cache_key, project_id=current.project_id
                )
                if earlier is not None and earlier.image_id == image_id:
                    reused = earlier.id
        build = await self._store.finish(
            build_id,
            token,
            state=state,
            image_id=image_id,
            git_commit=git_commit,
            stack=stack,
            port=port,
            error=error,
            failed_step=failed_step,
            durations=durations,
            reused_build_id=reused,
        )
        if build is None:
            current = await self._store.get(build_id)
            if current.lease_token == token and current.state is state:
                return current  # the same finish, repeated
            raise _lease_lost(build_id)
        if build.state is BuildState.SUCCEEDED:
            return await self._succeeded(build, skipped=False)
        await self._record_final(build)
        return build

    async def _succeeded(self, build: Build, *, skipped: bool) -> Build:
        """Record the success and release the image in the build's environment."""
        assert build.image_id is not None
        async with self._db.connection() as conn:
            await events.record(
                conn,
                "build.succeeded",
                f"build {build.id} succeeded"
                + (f" (unchanged: reused build {build.reused_build_id})" if skipped else ""),
                project_id=build.project_id,
                project_environment_id=build.project_environment_id,
                data={
                    "build_id": str(build.id),
                    "image_id": str(build.image_id),
                    "commit": build.git_commit,
                    "skipped": skipped,
                    "durations": build.durations,
                },
            )
        log.info("build.succeeded", build_id=str(build.id), skipped=skipped)
        description = f"build {build.id}"
        if build.git_commit:
            description += f" of {build.git_commit[:12]}"
        try:
            done = await self._release_service.deploy(
                str(build.project_id),
                ReleaseCreate(
                    image=str(build.image_id),
                    environment=build.environment,
                    port=build.port,
                    description=description,
                ),
            )
        except ZeitworkError as exc:
            message = f"the image was built but its release was refused: {exc.detail}"
            async with self._db.transaction() as tx:
                await events.record(
                    tx,
                    "build.release_failed",
                    message,
                    level="error",
                    project_id=build.project_id,
                    project_environment_id=build.project_environment_id,
                    data={"build_id": str(build.id)},
                )
                updated = await self._store.set_release(
                    build.id, release_id=None, error=message, conn=tx
                )
            log.warning("build.release_refused", build_id=str(build.id), error=exc.detail)
            return updated or build
        updated = await self._store.set_release(build.id, release_id=done.release.id)
        return updated or build

    async def _record_final(self, build: Build) -> None:
        level: events.Level = "error" if build.state is BuildState.FAILED else "info"
        step = f" at {build.failed_step}" if build.failed_step else ""
        async with self._db.connection() as conn:
            await events.record(
                conn,
                f"build.{build.state.value}",
                f"build {build.id} {build.state.value}{step}"
                + (f": {build.error}" if build.error else ""),
                level=level,
                project_id=build.project_id,
                project_environment_id=build.project_environment_id,
                data={"build_id": str(build.id), "failed_step": build.failed_step},
            )
        log.info("build.finished", build_id=str(build.id), state=build.state.value)

    # -- users -------------------------------------------------------------------------------

    async def cancel(self, build_id: uuid.UUID) -> Build:
        before = await self._store.get(build_id)
        build = await self._store.cancel(build_id)
        if before.state is BuildState.QUEUED and build.state is BuildState.CANCELLED:
            await self._record_final(build)
        return build

    async def follow_logs(
        self, build_id: uuid.UUID, *, after: int, keepalive: float
    ) -> AsyncIterator[list[LogChunk]]:
        """Batches of chunks after ``after`` until the build is finished (a success: with
        its release) and read to the end; an empty batch after ``keepalive`` seconds of
        silence."""
        cursor = after
        known: int | None = None
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        while not self._stopping.is_set():
            known = await self._watcher.version(BUILDS)
            chunks = await self._store.logs_after(build_id, cursor)
            if chunks:
                cursor = chunks[-1].seq
                quiet_since = loop.time()
                yield chunks
                continue
            build = await self._store.get(build_id)
            if build.state in FINISHED_STATES and _settled(build):
                return
            if loop.time() - quiet_since >= keepalive:
                quiet_since = loop.time()
                yield []
            await self._watcher.wait_change(BUILDS, known, min(keepalive, 5.0))


RELEASE_GRACE_SECONDS = 30.0


def _settled(build: Build) -> bool:
    """A finished build whose story is told: a success has its release (or the release's
    refusal in ``error``) a moment after it finished; past a grace period it is final
    anyway (pure but for the clock)."""
    if build.state is not BuildState.SUCCEEDED or build.release_id or build.error:
        return True
    finished = build.finished_at
    if finished is None:
        return True
    return (datetime.now(UTC) - finished).total_seconds() > RELEASE_GRACE_SECONDS


def _source_text(build: Build) -> str:
    if build.source_kind == "dir":
        return f"an uploaded context {str(build.context_sha256)[:12]}"
    at = build.git_commit[:12] if build.git_commit else build.git_ref
    return f"{build.git_url} at {at}"


def _lease_lost(build_id: uuid.UUID) -> Conflict:
    return Conflict(
        "this builder does not hold the build's lease (it expired and was taken, or the "
        "build finished)",
        extra={"build_id": str(build_id)},
    )


def _too_large(size: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the build context is over the limit of {limit} bytes (ZEITWORK_BUILD_CONTEXT_MAX_BYTES)",
        extra={"limit": limit, "size": size},
    )


UNPACKED_FACTOR = 4
"""A context's unpacked contents may be this many times the upload limit."""


def _check_archive(path: Path, limit: int) -> None:
    """Unpack into a scratch directory (the safe unpacker refuses what escapes) and drop
    it: an upload is refused at once rather than failing its build later."""
    scratch = Path(tempfile.mkdtemp(prefix=".check-", dir=path.parent))
    try:
        unpack(path, scratch / "ctx", limit=limit * UNPACKED_FACTOR)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
