"""One build job, start to finish: fetch the source, skip it when that commit and these
settings built before, build with ``buildah bud``, push the image to the platform registry
(``buildah push docker://``, when the job names ``push_to``: only the layers the registry
lacks are sent) and tell the operator its digest, or else export an OCI archive and upload
it to the operator; finish the job under its lease.

While it runs, a renewer keeps the lease (every third of its length) and hears of a cancel;
the output goes to the operator in chunks (``LogShipper``). A step that fails finishes the
job ``failed`` with the step's name and the last lines of its output; a lost lease stops the
build and finishes nothing (another builder has the job); a builder stopping hands the job
back (``give_up``). The work directory of a job is removed at its end; the per-project
buildah storage (``cache/<project>``) stays, so unchanged layers are reused (``--layers``);
the builder trims and prunes it between jobs (``cache``), never while a build holds it.

Nothing of the builder's own reaches the build: buildah runs with a clean environment (the
PATH, locale and proxy variables), a HOME and TMPDIR of the job's own; its token is only in
this process. The RUN steps of a user's Dockerfile get ``BUILDER_NETWORK`` (``host``, or
``none``: a loopback of their own); a detected stack's install steps always get ``host``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from zeitwork import __version__
from zeitwork.builder import git, limits
from zeitwork.builder.cache import LayerCaches
from zeitwork.builder.process import StepFailed, Stopped, clean_env, run
from zeitwork.builder.settings import BuilderSettings
from zeitwork.clients.builds import BuilderClient
from zeitwork.core.errors import Conflict, ZeitworkError
from zeitwork.wire.builds import MAX_LOG_CHUNK, BuildFinish, BuildJob

log = structlog.get_logger("zeitwork.builder")

DOCKERFILES = ("Dockerfile", "Containerfile")
_STEP = re.compile(r"^STEP \d+/\d+: .*$", re.MULTILINE)


def sandbox(unshare: str, network: str) -> list[str]:
    """The argv prefix ``buildah bud`` runs under (pure): a PID namespace with a /proc of its
    own, so a RUN step (chroot isolation binds buildah's /proc into the step) sees buildah
    and its steps, never the host's processes and their command lines; with ``network``
    none, a network namespace with only a loopback too (chroot isolation makes no network
    namespace for a step and refuses ``--network none``: the whole build runs offline).
    When the namespace's first process ends, the kernel kills every process left in it."""
    argv = [unshare, "--pid", "--fork", "--kill-child", "--mount-proc"]
    if network == "none":
        argv.append("--net")
    return [*argv, "--"]


_TAIL_LINES = 20


@dataclass
class LogShipper:
    """Buffers output and posts it in chunks (every ``flush_seconds`` or 32 KiB); keeps
    the last lines for a failure's cause; hides ``secrets`` should a tool print one."""

    client: BuilderClient
    build_id: uuid.UUID
    token: uuid.UUID
    flush_seconds: float
    secrets: tuple[str, ...] = ()
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    _buffer: list[str] = field(default_factory=list)
    _size: int = 0
    _tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))
    _partial: str = ""
    last_step: str | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def write(self, text: str) -> None:
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, "***")
        self._buffer.append(text)
        self._size += len(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                self._tail.append(line.rstrip())
            if _STEP.match(line):
                self.last_step = line.strip()
        if self._size >= 32 * 1024:
            await self.flush()

    async def say(self, text: str) -> None:
        await self.write(f"==> {text}\n")

    def tail(self) -> list[str]:
        lines = list(self._tail)
        if self._partial.strip():
            lines.append(self._partial.strip())
        return lines[-_TAIL_LINES:]

    async def flush(self) -> None:
        async with self._lock:
            if not self._buffer or self.lost.is_set():
                self._buffer, self._size = [], 0
                return
            text = "".join(self._buffer)
            self._buffer, self._size = [], 0
            for start in range(0, len(text), MAX_LOG_CHUNK // 4):
                piece = text[start : start + MAX_LOG_CHUNK // 4]
                try:
                    answer = await self.client.append_log(self.build_id, self.token, piece)
                except Conflict:
                    self.lost.set()
                    return
                except ZeitworkError as exc:  # the operator is away: this chunk is lost
                    log.warning("build.log_not_sent", error=exc.detail)
                    return
                if answer.cancel_requested:
                    self.cancel.set()

    async def run_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()


@dataclass
class Outcome:
    state: str
    image_id: uuid.UUID | None = None
    error: str | None = None
    failed_step: str | None = None
    skipped: bool = False
    durations: dict[str, float] = field(default_factory=dict)


class Runner:
    def __init__(
        self, *, settings: BuilderSettings, client: BuilderClient, caches: LayerCaches
    ) -> None:
        self._settings = settings
        self._client = client
        self._root = settings.root
        self._caches = caches

    async def run(self, job: BuildJob, stop: asyncio.Event) -> Outcome:
        """Run ``job``; ``stop`` set means the builder is stopping (hand the job back)."""
        build = job.build
        logs = LogShipper(
            client=self._client,
            build_id=build.id,
            token=job.lease_token,
            flush_seconds=self._settings.log_flush_seconds,
            secrets=(job.git_token,) if job.git_token else (),
        )
        halt = asyncio.Event()  # set on stop, cancel or a lost lease: the tools are killed
        watchers = [
            asyncio.create_task(logs.run_flusher(), name="log-flusher"),
            asyncio.create_task(self._renew(job, logs), name="lease-renewer"),
            asyncio.create_task(_any_set(halt, stop, logs.cancel, logs.lost), name="halt"),
        ]
        work = self._root / "jobs" / str(build.id)
        started = time.monotonic()
        outcome: Outcome
        try:
            outcome = await self._build(job, work, logs, halt)
        except StepFailed as exc:
            tail = [line for line in logs.tail() if "&imagebuilder.Step{" not in line]
            cause = exc.detail
            if tail:
                cause += "\nlast lines:\n" + "\n".join(tail[-10:])
            outcome = Outcome(state="failed", error=cause[:8000], failed_step=exc.step[:2000])
            await logs.say(f"failed at {exc.step}: {exc.detail}")
        except Stopped:
            if logs.lost.is_set():
                outcome = Outcome(state="lost")
            elif logs.cancel.is_set():
                outcome = Outcome(state="cancelled", error="cancelled")
                await logs.say("cancelled")
            else:
                outcome = Outcome(state="given_up")
        except Exception as exc:  # a builder bug must not leave the job running for ever
            log.exception("build.crashed", build_id=str(build.id))
            outcome = Outcome(
                state="failed",
                error=f"the builder failed unexpectedly: {type(exc).__name__}: {exc}"[:8000],
                failed_step="builder",
            )
        finally:
            for task in watchers:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await asyncio.to_thread(shutil.rmtree, work, True)
        outcome.durations["total"] = round(time.monotonic() - started, 3)
        await logs.flush()
        await self._report(job, outcome, logs)
        return outcome

    async def _report(self, job: BuildJob, outcome: Outcome, logs: LogShipper) -> None:
        build_id, token = job.build.id, job.lease_token
        if outcome.state == "lost" or logs.lost.is_set():
            log.warning("build.lease_lost", build_id=str(build_id))
            return
        try:
            if outcome.state == "given_up":
                await self._client.give_up(build_id, token)
                log.info("build.given_up", build_id=str(build_id))
                return
            await self._client.finish(
                build_id,
                BuildFinish(
                    lease_token=token,
                    state=outcome.state,  # type: ignore[arg-type]  # one of the three here
                    image_id=outcome.image_id,
                    error=outcome.error,
                    failed_step=outcome.failed_step,
                    durations=outcome.durations,
                ),
            )
        except Conflict:
            log.warning("build.lease_lost_at_finish", build_id=str(build_id))
        log.info(
            "build.finished",
            build_id=str(build_id),
            state=outcome.state,
            seconds=outcome.durations.get("total"),
        )

    async def _renew(self, job: BuildJob, logs: LogShipper) -> None:
        every = max(job.lease_seconds / 3, 0.2)
        while True:
            await asyncio.sleep(every)
            try:
                answer = await self._client.renew(job.build.id, job.lease_token)
            except Conflict:
                logs.lost.set()
                return
            except ZeitworkError as exc:  # try again; the lease outlives a short outage
                log.warning("build.renew_failed", error=exc.detail)
                continue
            if answer.cancel_requested:
                logs.cancel.set()

    # -- the steps -------------------------------------------------------------------------

    async def _build(
        self, job: BuildJob, work: Path, logs: LogShipper, halt: asyncio.Event
    ) -> Outcome:
        build = job.build
        settings = self._settings
        deadline = time.monotonic() + settings.timeout
        durations: dict[str, float] = {}
        await asyncio.to_thread(_fresh_dir, work)
        home = work / "home"
        tmp = work / "tmp"
        for path in (home, tmp):
            await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        if job.reuse_image_id is not None:
            await logs.say(f"unchanged since an earlier build: reusing image {job.reuse_image_id}")
            return Outcome(state="succeeded", image_id=job.reuse_image_id, skipped=True)

        t = time.monotonic()
        source = work / "src"
        if build.source_kind == "dir":
            await logs.say(f"fetching the uploaded context {str(build.context_sha256)[:12]}")
            archive = work / "context.tar"
            await self._client.download_context(build.id, job.lease_token, archive)
            await asyncio.to_thread(_unpack, archive, source)
            await asyncio.to_thread(archive.unlink)
        else:
            assert build.git_url is not None
            env = git.git_env(os.environ, home, job.git_token)
            commit = build.git_commit
            if commit is None:
                ref = build.git_ref or "main"
                await logs.say(f"resolving {ref} in {build.git_url}")
                commit = await git.resolve(
                    settings.git, build.git_url, ref, env=env, token=bool(job.git_token)
                )
            await logs.say(f"commit {commit}")
            resolved = await self._client.resolved(build.id, job.lease_token, commit)
            if resolved.reuse_image_id is not None:
                await logs.say(
                    f"commit {commit[:12]} was built with these settings before: "
                    f"reusing image {resolved.reuse_image_id}"
                )
                durations["fetch"] = round(time.monotonic() - t, 3)
                return Outcome(
                    state="succeeded",
                    image_id=resolved.reuse_image_id,
                    skipped=True,
                    durations=durations,
                )
            await git.checkout(
                settings.git,
                build.git_url,
                commit,
                source,
                ref=build.git_ref,
                env=env,
                token=bool(job.git_token),
                sink=logs.write,
                deadline=deadline,
                stop=halt,
            )
        durations["fetch"] = round(time.monotonic() - t, 3)
        context = source
        if build.git_path:
            context = (source / build.git_path).resolve()
            if not context.is_relative_to(source.resolve()) or not context.is_dir():
                raise StepFailed(
                    f"the path {build.git_path!r} is not a directory of the source",
                    step="fetch source",
                )
        # the project's storage is in use from the base image's copy to the export: the
        # builder's pruning between jobs (``cache``) leaves it alone meanwhile
        async with self._caches.in_use(str(build.project_id)):
            tag = await self._bud(job, context, work, logs, halt, deadline, durations)
            return await self._deliver(job, tag, work, logs, halt, deadline, durations)

    async def _bud(  # noqa: PLR0917 - one private step of _build
        self,
        job: BuildJob,
        context: Path,
        work: Path,
        logs: LogShipper,
        halt: asyncio.Event,
        deadline: float,
        durations: dict[str, float],
    ) -> str:
        """``buildah bud``: the built image's tag in the project's storage."""
        build = job.build
        settings = self._settings
        dockerfile, build_args, generated = await self._plan(job, context, work, logs)

        t = time.monotonic()
        tag = f"localhost/{job.project_slug}:build-{build.id}"
        storage = self._caches.storage(str(build.project_id))
        tool_env = _tool_env(work)
        # a detected stack's steps install packages: they need the network
        network = "host" if generated else settings.network
        argv = [
            *storage,
            "bud",
            "--isolation",
            settings.isolation,
            "--network",
            # chroot isolation refuses any but host: the sandbox's namespace is the build's
            "none" if network == "none" and settings.isolation != "chroot" else "host",
            "--layers",
            "--pull=false",  # a base image already in the project's storage is not re-pulled
            "-f",
            str(dockerfile),
            "-t",
            tag,
        ]
        for name, value in sorted(build_args.items()):
            argv += ["--build-arg", f"{name}={value}"]
        if settings.ca_bundle is not None:
            from zeitwork.builds.detect import CA_PATH

            # a bind mount of RUN steps only: the bundle is in no layer of the image
            argv += ["--volume", f"{settings.ca_bundle}:{CA_PATH}:ro"]
        argv = [*sandbox(settings.unshare, network), *argv, str(context)]
        await logs.say(
            f"buildah bud --layers (storage {settings.storage_driver}, network {network})"
        )
        argv, cgroup = await self._limited(argv, build.id)
        if cgroup is not None:
            argv = cgroup.wrap(argv)
        try:
            status = await run(
                argv,
                step="build",
                env=tool_env,
                sink=logs.write,
                deadline=deadline,
                stop=halt,
            )
            out_of_memory = cgroup is not None and cgroup.oom_killed()
        finally:
            if cgroup is not None:
                cgroup.remove()
        if status != 0:
            step = logs.last_step or "parse Dockerfile"
            reason = _buildah_error(logs.tail()) or f"buildah bud exited with status {status}"
            if out_of_memory:
                reason = (
                    f"the build ran out of memory (BUILDER_MEMORY_MAX={settings.memory_max}) "
                    f"and was killed: {reason}"
                )
            raise StepFailed(reason, step=step)
        durations["build"] = round(time.monotonic() - t, 3)
        return tag

    async def _deliver(  # noqa: PLR0917 - one private step of _build
        self,
        job: BuildJob,
        tag: str,
        work: Path,
        logs: LogShipper,
        halt: asyncio.Event,
        deadline: float,
        durations: dict[str, float],
    ) -> Outcome:
        """The image leaves the build host: pushed to the platform registry when the job
        says where (only the layers it lacks are sent), else, or when that push fails, as
        an OCI archive uploaded to the operator."""
        if job.push_to is not None:
            try:
                return await self._push(job, tag, work, logs, halt, deadline, durations)
            except StepFailed as exc:
                await logs.say(f"{exc.detail}; uploading the archive to the operator instead")
        exported = await self._export(job, tag, work, logs, halt, deadline, durations)
        return await self._upload(job, exported, logs, durations)

    async def _push(  # noqa: PLR0917 - one private step of _deliver
        self,
        job: BuildJob,
        tag: str,
        work: Path,
        logs: LogShipper,
        halt: asyncio.Event,
        deadline: float,
        durations: dict[str, float],
    ) -> Outcome:
        """``buildah push`` to ``push_to`` (no credentials: the operator offers it only for
        a registry that needs none), then the operator catalogues it by its digest. The
        project's storage keeps the blob info cache (``<root>/cache``): a layer pushed by an
        earlier build is known to be there and is not compressed or sent again."""
        build = job.build
        target = job.push_to
        assert target is not None
        t = time.monotonic()
        destination = f"{target.repository}:{target.tag}"
        digestfile = work / "digest"
        await logs.say(f"pushing the image to {destination}")
        argv = [*self._caches.storage(str(build.project_id)), "push", "--digestfile"]
        argv += [str(digestfile), "--retry", "0"]
        if target.plain_http:
            argv.append("--tls-verify=false")
        status = await run(
            [*argv, tag, f"docker://{destination}"],
            step="push image",
            env=_tool_env(work),
            sink=logs.write,
            deadline=deadline,
            stop=halt,
        )
        if status != 0:
            raise StepFailed(f"buildah push exited with status {status}", step="push image")
        digest = (await asyncio.to_thread(_read_digest, digestfile)) or ""
        if not digest.startswith("sha256:"):
            raise StepFailed(f"buildah push wrote no digest ({digest[:80]!r})", step="push image")
        durations["push"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        try:
            image = await self._client.pushed(build.id, job.lease_token, f"{destination}@{digest}")
        except Conflict:
            raise
        except ZeitworkError as exc:
            raise StepFailed(
                f"the operator did not take the pushed image: {exc.detail}", step="push image"
            ) from exc
        durations["record"] = round(time.monotonic() - t, 3)
        await logs.say(f"image {image.digest} ({image.id})")
        return Outcome(state="succeeded", image_id=image.id, durations=durations)

    async def _export(  # noqa: PLR0917 - one private step of _deliver
        self,
        job: BuildJob,
        tag: str,
        work: Path,
        logs: LogShipper,
        halt: asyncio.Event,
        deadline: float,
        durations: dict[str, float],
    ) -> Path:
        t = time.monotonic()
        exported = work / "image.tar"
        await logs.say("exporting the image (oci-archive)")
        storage = self._caches.storage(str(job.build.project_id))
        status = await run(
            [*storage, "push", "--quiet", tag, f"oci-archive:{exported}"],
            step="export image",
            env=_tool_env(work),
            sink=logs.write,
            deadline=deadline,
            stop=halt,
        )
        if status != 0:
            raise StepFailed(f"buildah push exited with status {status}", step="export image")
        durations["export"] = round(time.monotonic() - t, 3)
        return exported

    async def _upload(
        self, job: BuildJob, exported: Path, logs: LogShipper, durations: dict[str, float]
    ) -> Outcome:
        build = job.build
        t = time.monotonic()
        size = (await asyncio.to_thread(exported.stat)).st_size
        await logs.say(f"uploading the image ({size / 1e6:.1f} MB) to the operator")
        try:
            image = await self._client.upload_image(build.id, job.lease_token, exported)
        except Conflict:
            raise
        except ZeitworkError as exc:
            raise StepFailed(
                f"the operator refused the image: {exc.detail}", step="upload"
            ) from exc
        durations["upload"] = round(time.monotonic() - t, 3)
        await logs.say(f"image {image.digest} ({image.id})")
        # the image stays in the project's storage: its steps are the next build's cache
        # (the trimming between jobs keeps the newest image of a project, ``cache``)
        return Outcome(state="succeeded", image_id=image.id, durations=durations)

    async def _plan(
        self, job: BuildJob, context: Path, work: Path, logs: LogShipper
    ) -> tuple[Path, dict[str, str], bool]:
        """(the Dockerfile to build, the build args, whether it was generated): the build's
        own, a Dockerfile in the context, else a detected stack's generated one."""
        settings = job.cache_key_settings
        raw = settings.get("build_args")
        args = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        named = job.build.dockerfile
        if named:
            path = await asyncio.to_thread(_inside, context, named)
            if path is None:
                raise StepFailed(f"there is no Dockerfile at {named!r}", step="plan")
            return path, {**await self._ca_args(path), **args}, False
        for name in DOCKERFILES:
            if (context / name).is_file():
                path = context / name
                return path, {**await self._ca_args(path), **args}, False
        try:
            from zeitwork.builds.detect import declared_only, detect
        except ImportError:
            raise StepFailed(
                "no Dockerfile or Containerfile in the source (stack detection is not "
                "available in this builder)",
                step="plan",
            ) from None
        try:
            plan: Any = await asyncio.to_thread(detect, context)
        except ZeitworkError as exc:
            raise StepFailed(exc.detail, step="detect stack") from exc
        for reason in getattr(plan, "reasons", ()):
            await logs.say(f"detect: {reason}")
        if plan.dockerfile is None:
            return context / plan.dockerfile_name, args, False
        host_args = plan.build_args(os.environ)
        bases = await self._bases(job, dict(plan.base_images), logs)
        given = {**host_args, **self._ca_values(), **bases, **args}
        generated = work / "Dockerfile.zeitwork"
        await asyncio.to_thread(generated.write_text, declared_only(plan.dockerfile, given))
        return generated, given, True

    def _ca_values(self) -> dict[str, str]:
        """With ``BUILDER_CA_BUNDLE``: the build arguments pointing OpenSSL, requests, pip
        and Node at the bundle's mount point (``_bud`` mounts it for RUN steps)."""
        from zeitwork.builds.detect import CA_ARGS, CA_PATH

        return dict.fromkeys(CA_ARGS, CA_PATH) if self._settings.ca_bundle else {}

    async def _ca_args(self, dockerfile: Path) -> dict[str, str]:
        """The CA build arguments a user's Dockerfile declares (``ARG PIP_CERT``...): only
        those, so buildah warns of no argument it did not use."""
        values = self._ca_values()
        if not values:
            return {}
        from zeitwork.builds.detect import declared_args

        text = await asyncio.to_thread(_read_head, dockerfile, 1 << 20)
        declared = declared_args(text)
        return {name: value for name, value in values.items() if name in declared}

    async def _bases(
        self, job: BuildJob, wanted: dict[str, str], logs: LogShipper
    ) -> dict[str, str]:
        """The base images a generated Dockerfile starts from, as build args: a user's own
        (``ZEITWORK_BUILD_BASE_IMAGES``), else the platform's, made once with mmdebstrap in
        the builder's base storage and copied into the project's storage."""
        from zeitwork.builds import base_images

        try:
            overrides = base_images.parse_overrides(self._settings.base_images)
        except ZeitworkError as exc:
            raise StepFailed(exc.detail, step="base image") from exc
        shared = base_images.Storage.at(self._root / "bases" / "storage")
        cache = self._caches.directory(str(job.build.project_id))
        project = base_images.Storage(root=cache / "root", runroot=cache / "runroot")
        args: dict[str, str] = {}
        for arg, name in wanted.items():
            if name in overrides:
                args[arg] = overrides[name]
                continue
            try:
                if not await asyncio.to_thread(base_images.exists, name, shared):
                    await logs.say(f"making the {name} base image (once; mmdebstrap)")
                started = time.monotonic()
                await asyncio.to_thread(base_images.ensure, name, shared.root)
                args[arg] = await asyncio.to_thread(base_images.copy_to, name, shared, project)
            except ZeitworkError as exc:
                raise StepFailed(exc.detail, step="base image") from exc
            await logs.say(f"base image {args[arg]} ({time.monotonic() - started:.1f} s)")
        return args

    async def _limited(
        self, argv: list[str], build_id: uuid.UUID
    ) -> tuple[list[str], limits.BuildCgroup | None]:
        """``argv`` with the memory/CPU limits: in a transient systemd scope where systemd
        runs, else in a cgroup of the build's own (``limits``; ``wrap`` starts the tool inside);
        as it is when neither can be had (the timeout and the process-group kill apply)."""
        settings = self._settings
        if not (settings.memory_max or settings.cpu_quota):
            return argv, None
        if await asyncio.to_thread(_systemd_runs):
            props: list[str] = []
            if settings.memory_max:
                props += ["-p", f"MemoryMax={settings.memory_max}"]
            if settings.cpu_quota:
                props += ["-p", f"CPUQuota={settings.cpu_quota}"]
            return ["systemd-run", "--scope", "--quiet", "--collect", *props, "--", *argv], None
        cgroup = await asyncio.to_thread(
            limits.create,
            f"zeitwork-build-{build_id}",
            memory=settings.memory_max,
            cpu=settings.cpu_quota,
        )
        if cgroup is None:
            log.warning("build.no_limits", reason="no systemd and no cgroup v1 controllers")
        return argv, cgroup


def _tool_env(work: Path) -> dict[str, str]:
    """A tool's environment: clean (``clean_env``), the job's own HOME and TMPDIR."""
    return clean_env(os.environ, {"HOME": str(work / "home"), "TMPDIR": str(work / "tmp")})


def _read_head(path: Path, limit: int) -> str:
    with path.open("rb") as handle:
        return handle.read(limit).decode("utf-8", "replace")


def _read_digest(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _systemd_runs() -> bool:
    return shutil.which("systemd-run") is not None and Path("/run/systemd/system").is_dir()


def builder_version() -> str:
    return f"zeitwork-builder/{__version__}"


async def _any_set(target: asyncio.Event, *sources: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in sources]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        target.set()
    finally:
        for w in waits:
            w.cancel()


def _inside(root: Path, name: str) -> Path | None:
    path = (root / name).resolve()
    return path if path.is_relative_to(root.resolve()) and path.is_file() else None


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _unpack(archive: Path, dest: Path) -> None:
    from zeitwork.builds.context import unpack

    limit = 4 * archive.stat().st_size + 64 * 1024 * 1024
    try:
        unpack(archive, dest, limit=limit)
    except ZeitworkError as exc:
        raise StepFailed(exc.detail, step="fetch source") from exc


def _buildah_error(tail: list[str]) -> str | None:
    for line in reversed(tail):
        if line.startswith("Error:"):
            # buildah appends Go's dump of the parsed step: the message is enough
            return re.sub(r"\s*&imagebuilder\.Step\{.*$", "", line.removeprefix("Error:")).strip()
    return None
