"""The builder's operations, for real (a ``git daemon``, ``zeitwork builder`` processes and
buildah on vfs with chroot isolation; the suite's busybox base, nothing downloaded):

- a build's RUN steps see none of the builder's environment (its token, the operator's
  settings and secrets it was started with), neither in their own environment nor in any
  process's they can read in /proc; with ``BUILDER_NETWORK=none`` no network at all (a
  server on the host's loopback is unreachable), with the default ``host`` the host's
  network;
- the layer caches: the project just built keeps only its newest image (and the cache of
  its steps), a cache unused past ``max_age`` is removed, over ``max_bytes`` the least
  recently used goes first, and a cache a build holds is never touched.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gitserver import GitServer
from tests.images import BuiltImage
from tests.integration.builds.conftest import Builders, with_group
from tests.integration.builds.test_builds_git import log_text, queue, wait_build
from tests.integration.operator.conftest import OperatorFactory
from tests.integration.operator.live_server import live_operator
from tests.integration.operator.releases_kit import platform
from zeitwork.builder.cache import LayerCaches, Policy, disk_usage
from zeitwork.operator.principal import Scope

pytestmark = [pytest.mark.slow, pytest.mark.requires_root]

CANARIES = {
    "ZEITWORK_SECRETS_KEY": "canary-secrets-key-5d1f",
    "ZEITWORK_ADMIN_TOKEN": "canary-admin-token-9a2e",
    "DATABASE_URL": "postgresql://zeitwork:canary-db-password-77c1@db.invalid/zeitwork",
}
MARKER = "reached-the-host-7f3b"


@pytest.fixture
def host_server() -> Iterator[int]:
    """An HTTP server on the host's 127.0.0.1 answering ``MARKER``; yields its port."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = MARKER.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def probing_dockerfile(base: BuiltImage, port: int, label: str) -> str:
    """RUN steps that print their environment and try the host's loopback (``label``
    makes the steps differ from an earlier build's, so they run rather than come from the
    layer cache)."""
    # the step's own environment, every process environment it may read in /proc and the
    # command line of every process it sees
    show_env = (
        f"echo ENV-START {label}; /bin/busybox env; "
        "for f in /proc/[0-9]*/environ; do /bin/busybox tr '\\000' '\\n' < $f; done; "
        "for f in /proc/[0-9]*/cmdline; do /bin/busybox tr '\\000' ' ' < $f; echo; done; "
        "echo ENV-END"
    )
    probe = (
        "if printf 'GET / HTTP/1.0\\r\\n\\r\\n' "
        f"| /bin/busybox nc -w 5 127.0.0.1 {port} | /bin/busybox grep -q {MARKER}; "
        f"then echo NET={label}-reachable; else echo NET={label}-unreachable; fi"
    )
    return (
        f"FROM oci-archive:{base.path}\n"
        "USER root\n"
        f"RUN {json.dumps(['/bin/busybox', 'sh', '-c', show_env])}\n"
        f"RUN {json.dumps(['/bin/busybox', 'sh', '-c', probe])}\n"
        "COPY index.html /www/index.html\n"
        "USER app\n"
        "EXPOSE 8080\n"
    )


def _run_output(logs: str, label: str) -> str:
    """What the step printed (not the step's command line, which the log shows first)."""
    start = logs.index(f"\nENV-START {label}\n")
    return logs[start : logs.index("\nENV-END\n", start)]


async def test_builds_get_no_builder_secrets_and_the_network_the_setting_names(
    operator_factory: OperatorFactory,
    git_server: GitServer,
    builders: Builders,
    busybox_image: BuiltImage,
    host_server: int,
) -> None:
    op = await operator_factory()
    p = await platform(op, nodes=1)
    async with live_operator(op) as url:
        token = await op.token(Scope.BUILDER)
        # network none: the RUN steps have a loopback of their own and nothing else
        git_server.push(
            "probe",
            {
                "Dockerfile": probing_dockerfile(busybox_image, host_server, "none"),
                "index.html": "x\n",
            },
        )
        closed = builders.start(url, token, "closed", BUILDER_NETWORK="none", **CANARIES)
        build = await queue(p, git_server.url("probe"), ref="main")
        done = await wait_build(p, build["id"])
        logs = await log_text(p, build["id"])
        assert done["state"] == "succeeded", (done, logs, builders.output("closed"))
        assert "network none" in logs
        assert "NET=none-unreachable" in logs, logs
        seen = _run_output(logs, "none")
        assert "PATH=" in seen  # the step's environment was printed
        assert "ZEITWORK_" not in seen, seen
        # its own PID namespace: buildah and the step, not the builder (python -m zeitwork builder)
        assert "buildah" in seen and "zeitwork builder" not in seen
        for value in (token, *CANARIES.values()):
            assert value not in logs
        with_group(closed, 15)
        assert await asyncio.to_thread(closed.wait, 30) == 0

        # the default (host): the same probe reaches the host's loopback
        git_server.push(
            "probe",
            {
                "Dockerfile": probing_dockerfile(busybox_image, host_server, "host"),
                "index.html": "x\n",
            },
        )
        builders.start(url, token, "open", **CANARIES)
        build = await queue(p, git_server.url("probe"), ref="main")
        done = await wait_build(p, build["id"])
        logs = await log_text(p, build["id"])
        assert done["state"] == "succeeded", (done, logs, builders.output("open"))
        assert "network host" in logs
        assert "NET=host-reachable" in logs, logs
        seen = _run_output(logs, "host")
        assert "ZEITWORK_" not in seen, seen
        assert "buildah" in seen and "zeitwork builder" not in seen
        for value in (token, *CANARIES.values()):
            assert value not in logs
        # pruning ran after the job: the project's cache was measured
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{builders.ports['open']}") as b:
            while True:
                metrics = (await b.get("/metrics")).text
                [line] = [
                    m for m in metrics.splitlines() if m.startswith("zeitwork_builder_cache_bytes")
                ]
                if float(line.split()[-1]) > 1_000_000:  # at least the busybox base's copy
                    break
                assert time.monotonic() < deadline, line
                await asyncio.sleep(0.2)


# --- the layer caches, on real buildah storage --------------------------------------------------


def _bud(caches: LayerCaches, project: str, context: Path, tag: str) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(context), "TMPDIR": str(context)}
    done = subprocess.run(
        [
            *caches.storage(project),
            "bud",
            "--isolation",
            "chroot",
            "--layers",
            "--pull=false",
            "-t",
            tag,
            str(context),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _images(caches: LayerCaches, project: str) -> list[dict[str, object]]:
    done = subprocess.run(
        [*caches.storage(project), "images", "--all", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    images: list[dict[str, object]] = json.loads(done.stdout or "[]")
    return images


def _context(tmp: Path, base: BuiltImage, name: str, text: str) -> Path:
    context = tmp / name
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(
        f"FROM oci-archive:{base.path}\n"
        "USER root\n"
        'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox dd if=/dev/urandom of=/dep bs=1024 '
        'count=512 2>/dev/null"]\n'
        "COPY index.html /www/index.html\n"
    )
    (context / "index.html").write_text(text)
    return context


async def test_layer_caches_are_trimmed_and_pruned_but_never_while_in_use(
    tmp_path: Path, busybox_image: BuiltImage
) -> None:
    caches = LayerCaches(
        root=tmp_path / "cache",
        buildah="buildah",
        storage_driver="vfs",
        policy=Policy(max_bytes=0, max_age=3600),
    )
    for project in ("alpha", "beta", "gamma"):
        async with caches.in_use(project):  # as a build holds it
            await asyncio.to_thread(
                _bud,
                caches,
                project,
                _context(tmp_path, busybox_image, project, "v1\n"),
                f"{project}:build-1",
            )
    # alpha: a one-line change -> a second image; trimming keeps only the newest
    changed = _context(tmp_path, busybox_image, "alpha", "v2\n")
    async with caches.in_use("alpha"):
        out = await asyncio.to_thread(_bud, caches, "alpha", changed, "alpha:build-2")
    assert "Using cache" in out  # the RUN step came from the cache
    named = [i for i in _images(caches, "alpha") if i.get("names")]
    assert len(named) == 2
    before = disk_usage(caches.directory("alpha"))
    assert await caches.trim("alpha")
    named = [i["names"] for i in _images(caches, "alpha") if i.get("names")]
    assert named == [["localhost/alpha:build-2"]], named
    assert disk_usage(caches.directory("alpha")) < before
    async with caches.in_use("alpha"):
        again = await asyncio.to_thread(_bud, caches, "alpha", changed, "alpha:build-3")
    assert again.count("Using cache") >= 2, again  # the newest's steps are still cached

    # a build holding a cache: trim and prune leave it alone
    old = time.time() - 7200
    for project in ("beta", "gamma"):
        os.utime(tmp_path / "cache" / f"{project}.lock", (old, old))
    async with caches.in_use("gamma"):
        os.utime(tmp_path / "cache" / "gamma.lock", (old, old))  # unused "for long", but held
        assert not await caches.trim("gamma")
        done = await caches.prune()
        assert [(project, reason) for project, reason, _ in done] == [("beta", "age")]
        assert not caches.directory("beta").exists()
        assert caches.directory("gamma").is_dir()
    # released: gamma is old now and goes too
    os.utime(tmp_path / "cache" / "gamma.lock", (old, old))
    done = await caches.prune()
    assert [(project, reason) for project, reason, _ in done] == [("gamma", "age")]

    # over the size cap: the least recently used goes first, the newest stays
    async with caches.in_use("delta"):
        await asyncio.to_thread(
            _bud,
            caches,
            "delta",
            _context(tmp_path, busybox_image, "delta", "v1\n"),
            "delta:build-1",
        )
    now = time.time()
    os.utime(tmp_path / "cache" / "alpha.lock", (now - 10, now - 10))
    os.utime(tmp_path / "cache" / "delta.lock", (now - 100, now - 100))
    alpha = disk_usage(caches.directory("alpha"))
    caches.policy = Policy(max_bytes=alpha + alpha // 2, max_age=0)
    done = await caches.prune()
    assert [(p, r) for p, r, _ in done if r != "trimmed"] == [("delta", "size")], done
    assert caches.directory("alpha").is_dir() and not caches.directory("delta").exists()
