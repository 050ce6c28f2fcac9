"""Build figures (issue 18 item 9), as root: ``python benchmarks/build.py``
(``make bench-build``).

A real platform: ``zeitwork dev`` as a subprocess (embedded PostgreSQL, operator, node agent
with runc, load balancer, edge proxy, builder with buildah on vfs and chroot isolation), and
a sample Dockerfile app with a dependency layer: ``COPY requirements.txt`` then a ``RUN``
that "installs" each requirement (2 MiB of random data, gzipped, per line: real CPU work
and a 16 MiB layer), then the app's file. Its base is the suite's busybox image (an
oci-archive: nothing is downloaded). Side by side in the same run, plain ``buildah bud``
(vfs, ``--isolation chroot``, ``--layers``, its own storage kept between the builds) of the
same context, with and without a ``buildah push oci-archive:`` (the image leaves the build
host; a platform build under ``zeitwork dev`` pushes to the platform registry instead, only
the layers it lacks, and the operator records it by reference: the builder's ``push`` and
``record`` durations; without a registry it exports and uploads: ``export``, ``upload``).

Cases, from the client's call to the build ``succeeded`` (the image in the operator):

- (a) first build (empty layer cache on both sides);
- (b) rebuild with no change (zeitwork: the same context sha256 builds nothing; goal < 1 s);
- (c) rebuild after a one-line change of the app's file (goal: within 1.5x of plain
  ``buildah bud`` with its layer cache);
- (d) ``git push`` to a ``git daemon`` repository, its signed GitHub push webhook, the build,
  the rolling release and the new version answering through the edge.

(a)-(c) upload the context the way ``zeitwork deploy`` in a directory does (pack, HEAD, PUT,
POST /builds); the figure is the platform's, without the CLI's interpreter start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
from tests.e2e.dev_platform import Platform, cli, dev_platform
from tests.gitserver import git_daemon
from tests.images import build_image

from zeitwork.builds.context import pack
from zeitwork.builds.webhook import sign
from zeitwork.clients.admin import AdminClient
from zeitwork.clients.builds import BuildsClient
from zeitwork.wire.builds import BuildCreate, BuildOut

REQUIREMENTS = [f"package-{n:02d}==1.{n}" for n in range(8)]
INSTALL = (
    "mkdir -p /app/deps && cd /app/deps && "
    "while read -r name; do "
    "/bin/busybox dd if=/dev/urandom bs=1024 count=2048 2>/dev/null "
    '| /bin/busybox gzip -9 > "$name.gz"; done < /app/requirements.txt'
)
FINISHED = ("succeeded", "failed", "cancelled")


def write_app(directory: Path, base: Path, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "Dockerfile").write_text(
        f"FROM oci-archive:{base}\n"
        "USER root\n"
        "COPY requirements.txt /app/requirements.txt\n"
        f"RUN {json.dumps(['/bin/busybox', 'sh', '-c', INSTALL])}\n"
        "COPY index.html /www/index.html\n"
        "USER app\n"
        "EXPOSE 8080\n"
    )
    (directory / "requirements.txt").write_text("\n".join(REQUIREMENTS) + "\n")
    (directory / "index.html").write_text(text)


class PlainBuildah:
    """``buildah bud`` as a user runs it by hand, with storage of its own kept between runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        home = root / "home"
        home.mkdir(parents=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(home),
            "TMPDIR": str(home),
        }
        self.storage = [
            "buildah",
            "--root",
            str(root / "storage"),
            "--runroot",
            str(root / "run"),
            "--storage-driver",
            "vfs",
        ]
        self.count = 0

    async def _run(self, *args: str) -> float:
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *self.storage,
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"buildah {args[0]} failed:\n{out.decode(errors='replace')}")
        return time.perf_counter() - started

    async def build(self, context: Path) -> tuple[float, float]:
        """(seconds of ``bud``, seconds of ``push oci-archive:``)."""
        self.count += 1
        tag = f"localhost/peer:v{self.count}"
        bud = await self._run(
            "bud", "--isolation", "chroot", "--layers", "--pull=false", "-t", tag, str(context)
        )
        archive = self.root / f"v{self.count}.tar"
        push = await self._run("push", "--quiet", tag, f"oci-archive:{archive}")
        archive.unlink()
        return bud, push


async def zeitwork_build(
    builds: BuildsClient, app: str, directory: Path, scratch: Path
) -> tuple[float, BuildOut]:
    """Pack and upload ``directory`` (when the operator lacks it), queue, wait: seconds."""
    started = time.perf_counter()
    archive = scratch / f"context-{uuid.uuid4().hex[:8]}.tar.gz"

    def _pack() -> str:
        with archive.open("wb") as out:
            return pack(directory, out, limit=200 * 1024 * 1024).sha256

    sha256 = await asyncio.to_thread(_pack)
    if not await builds.has_context(sha256):
        await builds.upload_context(sha256, archive)
    archive.unlink()
    build = await builds.create(app, BuildCreate(context=sha256, port=8080))
    build = await wait_build(builds, build.id)
    return time.perf_counter() - started, build


async def wait_build(builds: BuildsClient, build_id: uuid.UUID, within: float = 600) -> BuildOut:
    deadline = time.monotonic() + within
    while True:
        build = await builds.build(build_id)
        if build.state in FINISHED:
            if build.state != "succeeded":
                raise RuntimeError(f"build {build.id} {build.state}: {build.error}")
            return build
        if time.monotonic() > deadline:
            raise TimeoutError(f"build {build_id} still {build.state}")
        await asyncio.sleep(0.02)


async def served(p: Platform, domain: str, text: str, within: float = 120) -> float:
    """Seconds until ``GET /`` on ``domain`` through the edge answers ``text``."""
    started = time.perf_counter()
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=5) as web:
        while time.monotonic() < deadline:
            try:
                answer = await web.get(p.url("http") + "/", headers={"Host": domain})
                if answer.status_code == 200 and answer.text == text:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{domain} never answered {text!r}")


async def wait_started(p: Platform, within: float = 300) -> None:
    deadline = time.monotonic() + within
    while "Zeitwork is running" not in p.output():
        if p.process.returncode is not None or time.monotonic() > deadline:
            raise RuntimeError(f"zeitwork dev did not start:\n{p.output()[-4000:]}")
        await asyncio.sleep(0.2)


def _queue_times(build: BuildOut) -> dict[str, float]:
    """Seconds from queued to leased and from queued to finished, by the operator's clock."""
    times: dict[str, float] = {}
    if build.started_at is not None:
        times["queued->leased"] = round((build.started_at - build.queued_at).total_seconds(), 3)
    if build.finished_at is not None:
        times["queued->finished"] = round((build.finished_at - build.queued_at).total_seconds(), 3)
    return times


def _files(directory: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in directory.iterdir() if path.is_file()}


async def run(runs: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="zw-bench-build-"))
    base = build_image(root / "busybox-httpd.tar").path
    source = root / "app"
    peer = PlainBuildah(root / "peer")
    figures: dict[str, Any] = {"zeitwork": {}, "bud": {}, "push": {}, "steps": {}}
    git_servers = contextlib.ExitStack()  # the git daemon of (d), once started
    (root / "platform").mkdir()
    try:
        async with dev_platform(root / "platform") as p:
            await wait_started(p)
            env = {
                **os.environ,
                "OPERATOR_URL": p.url("operator"),
                "ZEITWORK_DATA_DIR": str(p.data_dir),
            }
            app = f"bench-{uuid.uuid4().hex[:6]}"
            domain = f"{app}.test"
            imported = await cli(env, "images", "import", str(base), "--name", "base")
            image_id = imported.splitlines()[1].split()[0]
            await cli(
                env, "deploy", "--app", app, "--image", image_id,
                "--vcpu", "0.25", "--memory", "64", "--domain", domain,
            )  # fmt: skip
            builds = BuildsClient(base_url=p.url("operator"), token=p.token)
            try:

                async def case(name: str, text: str | None) -> None:
                    if text is not None:
                        write_app(source, base, text)
                    seconds, build = await zeitwork_build(builds, app, source, root)
                    bud, push = await peer.build(source)
                    figures["zeitwork"].setdefault(name, []).append(seconds)
                    figures["bud"].setdefault(name, []).append(bud)
                    figures["push"].setdefault(name, []).append(push)
                    figures["steps"].setdefault(name, []).append(
                        {**build.durations, **_queue_times(build)}
                    )
                    print(
                        f"{name}: zeitwork {seconds:.2f} s {build.durations} "
                        f"reused={build.reused_build_id is not None}; "
                        f"buildah bud {bud:.2f} s + push {push:.2f} s",
                        flush=True,
                    )

                await case("first", "<h1>v0</h1>\n")
                await served(p, domain, "<h1>v0</h1>\n")
                for n in range(runs):
                    await case("unchanged", None)
                    await case("one-line", f"<h1>v{n + 1}</h1>\n")

                # (d) git push -> webhook -> build -> release -> through the edge
                (root / "repos").mkdir()
                git = git_servers.enter_context(git_daemon(root / "repos", start_within=20))
                async with AdminClient(base_url=p.url("operator"), token=p.token) as admin:
                    webhook_secret = (await admin.project_webhook(app)).secret
                for n in range(runs):
                    text = f"<h1>pushed {n}</h1>\n"
                    write_app(source, base, text)
                    started = time.perf_counter()
                    commit = await asyncio.to_thread(git.push, "app", _files(source))
                    pushed = time.perf_counter() - started
                    body = json.dumps(
                        {
                            "ref": "refs/heads/main",
                            "after": commit,
                            "repository": {"clone_url": git.url("app"), "full_name": "bench/app"},
                        }
                    ).encode()
                    async with httpx.AsyncClient(base_url=p.url("operator")) as hook:
                        answer = await hook.post(
                            f"/api/v1/webhooks/github/{app}",
                            content=body,
                            headers={
                                "Content-Type": "application/json",
                                "X-GitHub-Event": "push",
                                "X-GitHub-Delivery": str(uuid.uuid4()),
                                "X-Hub-Signature-256": sign(webhook_secret.encode(), body),
                            },
                        )
                    if answer.status_code != 202 or answer.json()["status"] != "queued":
                        raise RuntimeError(f"webhook: {answer.status_code} {answer.text}")
                    hooked = time.perf_counter() - started
                    build = await wait_build(builds, uuid.UUID(answer.json()["build_id"]))
                    built = time.perf_counter() - started
                    await served(p, domain, text)
                    serving = time.perf_counter() - started
                    figures.setdefault("git", []).append(
                        {
                            "git push": pushed,
                            "webhook answered": hooked,
                            "build succeeded": built,
                            "served through the edge": serving,
                            "steps": {**build.durations, **_queue_times(build)},
                        }
                    )
                    print(
                        f"git push #{n}: pushed {pushed:.2f} s, webhook {hooked:.2f} s, built "
                        f"{built:.2f} s {build.durations}, served {serving:.2f} s",
                        flush=True,
                    )
            finally:
                await builds.aclose()
    finally:
        git_servers.close()
        shutil.rmtree(root, ignore_errors=True)
    return figures


def report(figures: dict[str, Any]) -> None:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    def shown(values: list[float]) -> str:
        return ", ".join(f"{v:.2f}" for v in values)

    names = {
        "first": "(a) first build",
        "unchanged": "(b) rebuild, no change",
        "one-line": "(c) rebuild after a one-line change",
    }
    print()
    print("| case | zeitwork s | plain buildah bud s | bud + push oci-archive s | zeitwork / bud |")
    print("| --- | --- | --- | --- | --- |")
    for key, name in names.items():
        ours = figures["zeitwork"][key]
        bud = figures["bud"][key]
        both = [b + p for b, p in zip(bud, figures["push"][key], strict=True)]
        ratio = med(ours) / med(bud)
        print(f"| {name} | {shown(ours)} | {shown(bud)} | {shown(both)} | {ratio:.2f} |")
    print()
    print("zeitwork build steps (s, builder's own durations):")
    for key, name in names.items():
        for steps in figures["steps"][key]:
            print(f"  {name}: {steps}")
    print()
    print("| (d) git push -> webhook -> new version through the edge | s |")
    print("| --- | --- |")
    for stage in ("git push", "webhook answered", "build succeeded", "served through the edge"):
        print(f"| {stage} | {shown([g[stage] for g in figures['git']])} |")
    for g in figures["git"]:
        print(f"  steps: {g['steps']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2, help="repetitions of (b), (c) and (d)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-build runs as root (zeitwork dev: runc, bridge; buildah chroot)")
    report(asyncio.run(run(args.runs)))
