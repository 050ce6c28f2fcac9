"""Release use cases: deploy, rollback, config change, scale, and the facts an app's status
shows. Each runs in one transaction holding the environment's row lock (deploys to one
environment are serialised; the releases reconciler takes the same lock per pass).

Rules:

- A release is immutable; a deploy takes unset fields from the release being rolled out,
  else the current release (port, environment and secrets, resources, health check,
  strategy, restart policy), else the defaults (the image's exposed port or 8080, 1 vCPU /
  256 MiB, ``tcp`` on the port, ``rolling``, ``always``), and the environment's replica
  count.
- The image is checked before anything is written: unknown 404, not ready 422.
- A deploy while a rollout runs supersedes it: that rollout and its release become
  ``superseded`` and the new rollout starts from the current release (what serves); the
  superseded release's instances are stopped by the reconciler once they are not needed.
- Capacity: the first step of the rollout must fit on the ready nodes now (``max_surge``
  instances for ``rolling``, every replica for ``bluegreen`` or a first release), else 409
  naming the shortfall, unless ``max_unavailable`` > 0 lets old instances make room.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from zeitwork.core.errors import Conflict, InsufficientCapacity, InvalidInput, NotFound
from zeitwork.core.resources import Resources
from zeitwork.core.states import ImageState, ReleaseState, RolloutState
from zeitwork.operator.db import changes, events
from zeitwork.operator.db.database import Conn, Database
from zeitwork.operator.db.images import Image, ImageStore
from zeitwork.operator.db.instances import InstanceStore
from zeitwork.operator.db.projects import Project, ProjectStore
from zeitwork.operator.db.releases import (
    Environment,
    NewRelease,
    Release,
    ReleaseStore,
    Rollout,
)
from zeitwork.operator.scheduler.placement import NoFit, place_replicas
from zeitwork.operator.secret_box import SecretBox
from zeitwork.operator.services.instances import no_fit_error
from zeitwork.wire.health import HealthCheck
from zeitwork.wire.releases import (
    ENV_NAME_PATTERN,
    EnvChange,
    ReleaseCreate,
    RollbackRequest,
    RolloutStrategy,
    resolve_count,
)

log = structlog.get_logger("zeitwork.operator.releases")

DEFAULT_PORT = 8080
DEFAULT_VCPU_MILLIS = 1000
DEFAULT_MEMORY_MIB = 256

_N = TypeVar("_N", int, float)


def exposed_port(config: dict[str, Any]) -> int | None:
    """The first TCP port an image's config exposes (``ExposedPorts: {"8080/tcp": {}}``,
    at the top or under ``config``), or None."""
    inner = config.get("config")
    for source in (config, inner if isinstance(inner, dict) else {}):
        ports = source.get("ExposedPorts")
        if isinstance(ports, dict):
            for key in sorted(ports):
                number, _, proto = str(key).partition("/")
                if number.isdigit() and proto in ("", "tcp") and 0 < int(number) < 65536:
                    return int(number)
    return None


def surge_needed(strategy: RolloutStrategy, replicas: int, *, first: bool) -> tuple[int, int]:
    """(instances the rollout's first step places beside what runs, old instances it may
    take out first)."""
    if first or strategy.type == "bluegreen":
        return replicas, 0
    if strategy.type == "immediate":
        return 0, replicas
    surge = resolve_count(strategy.max_surge, replicas, round_up=True)
    unavailable = resolve_count(strategy.max_unavailable, replicas, round_up=False)
    return min(max(surge, 1), replicas), unavailable


def inherited_limit(asked: _N | None, current: _N | None) -> _N | None:
    """A per-route limit of a deploy (``ReleaseCreate.response_idle_timeout``,
    ``tunnel_idle_timeout``, ``max_tunnels``): not named keeps the current release's, 0 clears
    it (the load balancers' own; no tunnel limit), any other value is the new one."""
    if asked is None:
        return current
    return asked or None


def limits_of(release: Release) -> dict[str, Any]:
    """A release's per-route limits, as the ``NewRelease`` fields a rollback or a config
    change copies."""
    return {
        "response_idle_timeout": release.response_idle_timeout,
        "tunnel_idle_timeout": release.tunnel_idle_timeout,
        "max_tunnels": release.max_tunnels,
    }


@dataclass(frozen=True, slots=True)
class Deployed:
    release: Release
    rollout: Rollout
    superseded: Rollout | None = None


class ReleaseService:
    def __init__(
        self,
        *,
        db: Database,
        releases: ReleaseStore,
        projects: ProjectStore,
        images: ImageStore,
        instances: InstanceStore,
        box: SecretBox,
        resolve_image: Callable[[str, str], Awaitable[Image]] | None = None,
    ) -> None:
        self._resolve_image = resolve_image  # registry references (ImageService)
        self._db = db
        self._releases = releases
        self._projects = projects
        self._images = images
        self._instances = instances
        self._box = box

    async def locate(
        self, project_ref: str, environment: str, *, create: bool = False, conn: Conn | None = None
    ) -> tuple[Project, Environment]:
        project = await self._projects.project_by_ref(project_ref, conn=conn)
        env = await self._releases.environment(project.id, environment, create=create, conn=conn)
        return project, env

    # -- deploy --------------------------------------------------------------------------

    async def deploy(self, project_ref: str, body: ReleaseCreate) -> Deployed:
        if "/" in body.image and self._resolve_image is not None:
            # a registry reference: its tag resolved to a digest now, once (the release pins it)
            # (the project's stored credentials for that registry are used)
            image = await self._resolve_image(body.image.strip(), project_ref)
        else:
            image = await self._images.get(self._image_id(body.image))  # NotFound: 404 first
        if image.status is not ImageState.READY or image.digest is None:
            raise InvalidInput(
                f"image {image.id} is {image.status.value}, not ready",
                extra={"errors": [{"field": "image", "message": "image not ready"}]},
            )
        async with self._db.transaction() as tx:
            project, env = await self.locate(project_ref, body.environment, create=True, conn=tx)
            env = await self._releases.environment_by_id(env.id, lock=True, conn=tx)
            current = (
                None
                if env.current_release_id is None
                else await self._releases.get(env.current_release_id, conn=tx)
            )
            # defaults: the release being rolled out (the user's latest word), else the current
            running = await self._releases.running_rollout(env.id, conn=tx)
            base = (
                current
                if running is None
                else await self._releases.get(running.release_id, conn=tx)
            )
            if body.replicas is not None and body.replicas != env.replicas:
                await self._releases.set_replicas(env.id, body.replicas, conn=tx)
                env = await self._releases.environment_by_id(env.id, conn=tx)
            port = body.port or (base.port if base else None)
            port = port or exposed_port(image.config) or DEFAULT_PORT
            strategy = body.strategy or (
                RolloutStrategy.model_validate(base.strategy) if base else RolloutStrategy()
            )
            check = body.health_check or (
                HealthCheck.model_validate(base.health_check) if base else HealthCheck()
            )
            if body.resources is not None:
                vcpu = max(1, round(body.resources.vcpu * 1000))
                memory = body.resources.memory
            elif base is not None:
                vcpu, memory = base.vcpu_millis, base.memory_mib
            else:
                vcpu, memory = DEFAULT_VCPU_MILLIS, DEFAULT_MEMORY_MIB
            plain = dict(base.env) if base else {}
            plain.update(body.env or {})
            secrets = dict(base.secrets) if base else {}
            for name in body.env or {}:
                secrets.pop(name, None)
            new = NewRelease(
                project_id=project.id,
                project_environment_id=env.id,
                image_id=image.id,
                image_digest=image.digest,
                image_ref=image.name,
                command=body.command,
                port=port,
                env=plain,
                secrets=secrets,
                vcpu_millis=vcpu,
                memory_mib=memory,
                replicas=env.replicas,
                health_check=check.model_dump(mode="json"),
                restart_policy=body.restart_policy or (base.restart_policy if base else "always"),
                strategy=strategy.model_dump(mode="json"),
                reason="deploy",
                description=body.description,
                backend_protocol=body.backend_protocol
                or (base.backend_protocol if base else "http1"),
                response_idle_timeout=inherited_limit(
                    body.response_idle_timeout, base.response_idle_timeout if base else None
                ),
                tunnel_idle_timeout=inherited_limit(
                    body.tunnel_idle_timeout, base.tunnel_idle_timeout if base else None
                ),
                max_tunnels=inherited_limit(body.max_tunnels, base.max_tunnels if base else None),
            )
            return await self._roll_out(tx, env, current, new)

    @staticmethod
    def _image_id(ref: str) -> uuid.UUID:
        try:
            return uuid.UUID(ref.strip())
        except ValueError:
            raise InvalidInput(
                f"image {ref[:100]!r} is neither an image id nor a registry reference "
                "(registry/repository:tag; there is no default registry): import the image "
                "first (zeitwork images import) and deploy it by id, or name its registry",
                extra={"errors": [{"field": "image", "message": "not an image id"}]},
            ) from None

    async def _roll_out(
        self, tx: Conn, env: Environment, current: Release | None, new: NewRelease
    ) -> Deployed:
        strategy = RolloutStrategy.model_validate(new.strategy)
        await self._check_capacity(tx, strategy, new, first=current is None)
        superseded = await self._releases.running_rollout(env.id, conn=tx)
        if superseded is not None:
            await self._releases.finish_rollout(
                superseded.id, RolloutState.SUPERSEDED, error="a newer deploy took over", conn=tx
            )
            for state in (ReleaseState.DEPLOYING, ReleaseState.PENDING):
                if await self._releases.set_release_state(
                    superseded.release_id, state, ReleaseState.SUPERSEDED, conn=tx
                ):
                    break
        release = await self._releases.create(new, state=ReleaseState.DEPLOYING, conn=tx)
        rollout = await self._releases.start_rollout(
            release=release,
            from_release_id=current.id if current else None,
            strategy=strategy.type,
            deadline_seconds=strategy.progress_deadline,
            conn=tx,
        )
        ids: dict[str, Any] = {
            "project_id": release.project_id,
            "project_environment_id": env.id,
            "release_id": release.id,
        }
        if superseded is not None:
            await events.record(
                tx,
                "rollout.superseded",
                f"superseded by the rollout of v{release.version}",
                level="warning",
                project_id=release.project_id,
                project_environment_id=env.id,
                release_id=superseded.release_id,
                rollout_id=superseded.id,
                data={"by_release_id": str(release.id)},
            )
        await events.record(
            tx,
            "release.created",
            f"v{release.version} created ({new.reason}) from image {new.image_ref}",
            **ids,
            data={"version": release.version, "reason": new.reason, "image": new.image_ref},
        )
        await events.record(
            tx,
            "rollout.started",
            f"rolling out v{release.version} ({strategy.type}, {env.replicas} replicas)",
            rollout_id=rollout.id,
            **ids,
            data={"strategy": strategy.type, "replicas": env.replicas},
        )
        await changes.bump(tx, changes.RELEASES)
        log.info(
            "release.created",
            release_id=str(release.id),
            version=release.version,
            environment_id=str(env.id),
            reason=new.reason,
            superseded_rollout=str(superseded.id) if superseded else None,
        )
        return Deployed(release=release, rollout=rollout, superseded=superseded)

    async def _check_capacity(
        self, tx: Conn, strategy: RolloutStrategy, new: NewRelease, *, first: bool
    ) -> None:
        needed, unavailable = surge_needed(strategy, new.replicas, first=first)
        if needed <= 0:
            return
        request = Resources(millicpu=new.vcpu_millis, memory_mib=new.memory_mib)
        candidates = await self._instances.candidates(
            request, feasible_only=False, limit=None, conn=tx
        )
        decision = place_replicas(candidates, request, needed)
        if not isinstance(decision, NoFit):
            return
        if unavailable > 0:  # old instances leave first and make room
            log.warning("release.capacity_short", needed=needed, max_unavailable=unavailable)
            return
        error = no_fit_error(decision)
        error.detail = f"not enough capacity for {needed} new instance(s): {error.detail}"
        raise error

    # -- rollback and config ---------------------------------------------------------------

    async def _rollback_strategy(self, tx: Conn, source: Release, replicas: int) -> dict[str, Any]:
        """A rollback is the way out of a bad release: a rolling source strategy runs with
        its whole surge at once (``max_surge`` 100 %: every replacement starts together, the
        image is still cached on the nodes) when the nodes have room for it, else as the
        source release ran."""
        strategy = RolloutStrategy.model_validate(source.strategy)
        if strategy.type != "rolling":
            return dict(source.strategy)
        fast = strategy.model_copy(update={"max_surge": "100%"})
        probe = NewRelease(
            project_id=source.project_id,
            project_environment_id=source.project_environment_id,
            image_id=source.image_id,
            image_digest=source.image_digest,
            image_ref=source.image_ref,
            command=source.command,
            port=source.port,
            backend_protocol=source.backend_protocol,
            env={},
            secrets={},
            vcpu_millis=source.vcpu_millis,
            memory_mib=source.memory_mib,
            replicas=replicas,
            health_check=source.health_check,
            restart_policy=source.restart_policy,
            strategy=fast.model_dump(mode="json"),
            reason="rollback",
        )
        try:
            await self._check_capacity(tx, fast, probe, first=False)
        except InsufficientCapacity:
            return dict(source.strategy)
        return fast.model_dump(mode="json")

    async def rollback(self, project_ref: str, body: RollbackRequest) -> Deployed:
        async with self._db.transaction() as tx:
            _project, env = await self.locate(project_ref, body.environment, conn=tx)
            env = await self._releases.environment_by_id(env.id, lock=True, conn=tx)
            if env.current_release_id is None:
                raise Conflict("nothing to roll back: the environment has no current release")
            current = await self._releases.get(env.current_release_id, conn=tx)
            if body.version is not None:
                source = await self._releases.by_version(env.id, body.version, conn=tx)
                if source.state is ReleaseState.FAILED:
                    raise Conflict(
                        f"v{source.version} failed ({source.error or 'no cause recorded'}); "
                        "roll back to a release that served"
                    )
            else:
                found = await self._releases.previous_good(env.id, below=current.version, conn=tx)
                if found is None:
                    raise Conflict(
                        f"no release before v{current.version} served; nothing to roll back to"
                    )
                source = found
            new = NewRelease(
                project_id=source.project_id,
                project_environment_id=env.id,
                image_id=source.image_id,
                image_digest=source.image_digest,
                image_ref=source.image_ref,
                command=source.command,
                port=source.port,
                backend_protocol=source.backend_protocol,
                **limits_of(source),
                env=dict(source.env),
                secrets=dict(source.secrets),
                vcpu_millis=source.vcpu_millis,
                memory_mib=source.memory_mib,
                replicas=env.replicas,
                health_check=source.health_check,
                restart_policy=source.restart_policy,
                strategy=await self._rollback_strategy(tx, source, env.replicas),
                reason="rollback",
                description=f"rollback to v{source.version}",
                source_release_id=source.id,
            )
            deployed = await self._roll_out(tx, env, current, new)
            await events.record(
                tx,
                "release.rolled_back",
                f"v{deployed.release.version} rolls back to v{source.version}",
                project_id=source.project_id,
                project_environment_id=env.id,
                release_id=deployed.release.id,
                rollout_id=deployed.rollout.id,
                data={"source_version": source.version},
            )
            return deployed

    async def change_env(self, project_ref: str, body: EnvChange) -> Deployed:
        overlap = (set(body.set) & set(body.secrets)) | (
            (set(body.set) | set(body.secrets)) & set(body.unset)
        )
        bad = [
            n for n in (*body.set, *body.secrets, *body.unset) if not re.match(ENV_NAME_PATTERN, n)
        ]
        if bad:
            raise InvalidInput(
                f"invalid environment variable name {bad[0][:60]!r}",
                extra={"errors": [{"field": "set", "message": "invalid name"}]},
            )
        if overlap:
            raise InvalidInput(
                "a name may appear once among set, secrets and unset: "
                + ", ".join(sorted(overlap)[:10])
            )
        async with self._db.transaction() as tx:
            _project, env = await self.locate(project_ref, body.environment, conn=tx)
            env = await self._releases.environment_by_id(env.id, lock=True, conn=tx)
            current = (
                None
                if env.current_release_id is None
                else await self._releases.get(env.current_release_id, conn=tx)
            )
            running = await self._releases.running_rollout(env.id, conn=tx)
            base = (
                current
                if running is None
                else await self._releases.get(running.release_id, conn=tx)
            )
            if base is None:
                raise Conflict("the environment has no release yet; deploy an image first")
            plain = dict(base.env)
            sealed = dict(base.secrets)
            for name, value in body.set.items():
                plain[name] = value
                sealed.pop(name, None)
            for name, value in body.secrets.items():
                sealed[name] = self._box.seal(value)
                plain.pop(name, None)
            missing = [n for n in body.unset if n not in plain and n not in sealed]
            if missing:
                raise NotFound(f"no variable named {', '.join(sorted(missing)[:10])}")
            for name in body.unset:
                plain.pop(name, None)
                sealed.pop(name, None)
            changed = sorted(set(body.set) | set(body.secrets) | set(body.unset))
            new = NewRelease(
                project_id=base.project_id,
                project_environment_id=env.id,
                image_id=base.image_id,
                image_digest=base.image_digest,
                image_ref=base.image_ref,
                command=base.command,
                port=base.port,
                backend_protocol=base.backend_protocol,
                **limits_of(base),
                env=plain,
                secrets=sealed,
                vcpu_millis=base.vcpu_millis,
                memory_mib=base.memory_mib,
                replicas=env.replicas,
                health_check=base.health_check,
                restart_policy=base.restart_policy,
                strategy=base.strategy,
                reason="config",
                description="config: " + ", ".join(changed)[:1900],
            )
            return await self._roll_out(tx, env, current, new)

    async def env(self, project_ref: str, environment: str) -> tuple[dict[str, str], list[str]]:
        """The plain variables and the secrets' names of the release being rolled out, else
        of the current one."""
        _project, env = await self.locate(project_ref, environment)
        running = await self._releases.running_rollout(env.id)
        release_id = env.current_release_id if running is None else running.release_id
        if release_id is None:
            return {}, []
        latest = await self._releases.get(release_id)
        return dict(latest.env), sorted(latest.secrets)

    # -- scale ---------------------------------------------------------------------------

    async def scale(self, project_ref: str, environment: str, replicas: int) -> Environment:
        async with self._db.transaction() as tx:
            project, env = await self.locate(project_ref, environment, conn=tx)
            env = await self._releases.environment_by_id(env.id, lock=True, conn=tx)
            if env.replicas != replicas:
                await self._releases.set_replicas(env.id, replicas, conn=tx)
                await events.record(
                    tx,
                    "environment.scaled",
                    f"replicas {env.replicas} -> {replicas}",
                    project_id=project.id,
                    project_environment_id=env.id,
                    data={"from": env.replicas, "to": replicas},
                )
                await changes.bump(tx, changes.RELEASES)
                log.info(
                    "environment.scaled",
                    environment_id=str(env.id),
                    replicas=replicas,
                    was=env.replicas,
                )
            return await self._releases.environment_by_id(env.id, conn=tx)
