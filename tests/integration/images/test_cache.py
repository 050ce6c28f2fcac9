"""The node's image cache with real files: unpack once, verify, evict, restart; each test
twice, with the layer store (``layered``: each layer unpacked once, an overlay view) and
unpacked whole by real umoci (``whole``, as without root)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.images import APP_UID, BuiltImage, Entry, build_image
from zeitwork.core.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable
from zeitwork.images import Fetch, ImageCache

pytestmark = pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")


def copy_from(source: Path, calls: list[Path] | None = None) -> Fetch:
    async def fetch(dest: Path) -> None:
        if calls is not None:
            calls.append(dest)
        await asyncio.to_thread(shutil.copyfile, source, dest)

    return fetch


def tiny_image(dest: Path, name: str, size: int) -> BuiltImage:
    """A small non-runnable image whose unpacked size is about ``size`` bytes."""
    layer = [Entry("data", mode=0o755), Entry(f"data/{name}", bytes(size))]
    return build_image(dest, layers=[layer], entrypoint=None, cmd=["/data/x"], user="", ports=())


def leftovers(root: Path) -> list[Path]:
    return sorted((root / "tmp").iterdir())


@pytest.fixture(params=["whole", "layered"])
def layered(request: pytest.FixtureRequest) -> bool:
    if request.param == "layered" and os.geteuid() != 0:
        pytest.skip("the layer store needs root")
    return bool(request.param == "layered")


@pytest.fixture
async def cache(tmp_path: Path, layered: bool) -> AsyncIterator[ImageCache]:
    cache = await ImageCache.open(root=tmp_path / "cache", max_bytes=1 << 30, layered=layered)
    yield cache
    await cache.close()


async def test_unpack_busybox_image(cache: ImageCache, busybox_image: BuiltImage):
    image = await cache.ensure(busybox_image.digest, copy_from(busybox_image.path))
    assert image.digest == busybox_image.digest
    assert image.rootfs == cache.root / "images" / busybox_image.digest[7:] / "rootfs"
    with cache.view(image) as tree:
        assert (tree / "bin" / "busybox").stat().st_size > 1_000_000
        assert (tree / "bin" / "sh").readlink() == Path("busybox")
        assert (tree / "www" / "health").read_text() == "ok\n"
        assert (tree / "tmp").stat().st_mode & 0o7777 == 0o1777
    if cache.layered:
        assert image.layers == (cache.root / "layers" / image.diff_ids[0][7:],)
        assert list(image.rootfs.iterdir()) == []  # the tree is in the layer store
    assert image.size >= 1_900_000
    assert cache.used_bytes == image.size
    assert cache.refs(image.digest) == 1
    process = image.process({"APP_GREETING": "instance", "EXTRA": "1"})
    assert process.argv == ("/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www")
    assert process.env == {
        "PATH": "/bin",
        "APP_GREETING": "instance",
        "HOME": "/www",
        "EXTRA": "1",
    }
    assert process.cwd == "/www"
    assert (process.uid, process.gid, process.additional_gids) == (APP_UID, 1000, (50,))
    assert leftovers(cache.root) == []


async def test_concurrent_callers_share_one_unpack(cache: ImageCache, busybox_image: BuiltImage):
    calls: list[Path] = []
    gate = asyncio.Event()
    inner = copy_from(busybox_image.path, calls)

    async def slow_fetch(dest: Path) -> None:
        await gate.wait()
        await inner(dest)

    tasks = [asyncio.create_task(cache.ensure(busybox_image.digest, slow_fetch)) for _ in range(6)]
    await asyncio.sleep(0)  # let every caller reach the shared unpack
    gate.set()
    images = await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert len(calls) == 1
    assert len({id(image) for image in images}) == 1
    assert cache.refs(busybox_image.digest) == 6
    assert len(list((cache.root / "images").iterdir())) == 1


async def test_cancelled_waiter_does_not_cancel_the_unpack(
    cache: ImageCache, busybox_image: BuiltImage
):
    gate = asyncio.Event()
    inner = copy_from(busybox_image.path)

    async def slow_fetch(dest: Path) -> None:
        await gate.wait()
        await inner(dest)

    first = asyncio.create_task(cache.ensure(busybox_image.digest, slow_fetch))
    second = asyncio.create_task(cache.ensure(busybox_image.digest, slow_fetch))
    await asyncio.sleep(0)
    first.cancel()
    gate.set()
    image = await asyncio.wait_for(second, 30)
    assert image.rootfs.is_dir()
    assert cache.refs(busybox_image.digest) == 1


async def test_digest_mismatch_keeps_nothing(
    cache: ImageCache, busybox_image: BuiltImage, tmp_path: Path
):
    other = tiny_image(tmp_path / "other.tar", "x", 1000)
    with pytest.raises(InvalidInput) as info:
        await cache.ensure(busybox_image.digest, copy_from(other.path))
    assert "digest mismatch" in info.value.detail
    assert other.digest in info.value.detail
    assert cache.get(busybox_image.digest) is None
    assert cache.get(other.digest) is None
    assert list((cache.root / "images").iterdir()) == []
    assert leftovers(cache.root) == []
    # a later correct download works
    image = await cache.ensure(busybox_image.digest, copy_from(busybox_image.path))
    assert image.rootfs.is_dir()


async def test_corrupt_download_keeps_nothing(
    cache: ImageCache, busybox_image: BuiltImage, tmp_path: Path
):
    data = bytearray(busybox_image.path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the layer blob
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match="does not match its sha256"):
        await cache.ensure(busybox_image.digest, copy_from(bad))
    assert cache.get(busybox_image.digest) is None
    assert leftovers(cache.root) == []


async def test_failing_fetch_keeps_nothing(cache: ImageCache, busybox_image: BuiltImage):
    async def unreachable(dest: Path) -> None:
        dest.write_bytes(b"partial")
        raise ServiceUnavailable("operator unreachable")

    with pytest.raises(ServiceUnavailable):
        await cache.ensure(busybox_image.digest, unreachable)
    assert leftovers(cache.root) == []
    with pytest.raises(InvalidInput):
        await cache.ensure("sha256:nothex", unreachable)
    with pytest.raises(NotFound):
        cache.acquire(busybox_image.digest)


async def test_lru_eviction_respects_references(tmp_path: Path, layered: bool):
    images = {n: tiny_image(tmp_path / f"{n}.tar", n, 400_000) for n in "abcd"}
    cache = await ImageCache.open(root=tmp_path / "cache", max_bytes=1_000_000, layered=layered)
    try:
        a = await cache.ensure(images["a"].digest, copy_from(images["a"].path))  # held
        b = await cache.ensure(images["b"].digest, copy_from(images["b"].path), acquire=False)
        assert a.size > 400_000
        assert cache.used_bytes < cache.max_bytes
        # c pushes the cache over the cap: b is the least recently used unused image
        await cache.ensure(images["c"].digest, copy_from(images["c"].path), acquire=False)
        assert cache.get(b.digest) is None
        assert not (cache.root / "images" / b.digest[7:]).exists()
        assert cache.get(a.digest) is not None
        # d: c is unused and older; a is in use and never evicted even if older
        await cache.ensure(images["d"].digest, copy_from(images["d"].path), acquire=False)
        assert [e.digest for e in cache.entries()] == [a.digest, images["d"].digest]
        assert cache.entries()[0].refs == 1
        with pytest.raises(Conflict):
            await cache.remove(a.digest)
        cache.release(a.digest)
        # a is now unused; using d again makes a the LRU one
        await cache.ensure(images["d"].digest, copy_from(images["d"].path))
        cache.max_bytes = 500_000
        assert await cache.evict() == [a.digest]
        assert cache.used_bytes <= cache.max_bytes
        assert leftovers(cache.root) == []
    finally:
        await cache.close()


async def test_image_larger_than_the_cache_is_still_served(tmp_path: Path, layered: bool):
    big = tiny_image(tmp_path / "big.tar", "big", 300_000)
    cache = await ImageCache.open(root=tmp_path / "cache", max_bytes=1000, layered=layered)
    image = await cache.ensure(big.digest, copy_from(big.path), acquire=False)
    assert cache.get(big.digest) == image
    assert await cache.evict() == [big.digest]  # unused: evictable on the next round
    assert cache.used_bytes == 0  # its layer too
    await cache.close()


async def test_restart_sees_unpacked_images(
    tmp_path: Path, layered: bool, busybox_image: BuiltImage
):
    root = tmp_path / "cache"
    first = await ImageCache.open(root=root, max_bytes=1 << 30, layered=layered)
    image = await first.ensure(busybox_image.digest, copy_from(busybox_image.path))
    await first.close()
    # leftovers of a crash: a half-done unpack and an image directory without metadata
    (root / "tmp" / "deadbeef-1234" / "rootfs").mkdir(parents=True)
    (root / "images" / ("e" * 64) / "rootfs").mkdir(parents=True)
    (root / "images" / "not-a-digest").write_text("junk")

    async def must_not_fetch(dest: Path) -> None:
        raise AssertionError("the image should come from disk")

    second = await ImageCache.open(root=root, max_bytes=1 << 30, layered=layered)
    again = await second.ensure(busybox_image.digest, must_not_fetch)
    assert again == image
    assert again.process().user == "1000:1000"
    assert sorted(p.name for p in (root / "images").iterdir()) == [busybox_image.digest[7:]]
    assert leftovers(root) == []
    meta = json.loads((root / "images" / busybox_image.digest[7:] / "image.json").read_text())
    assert meta["digest"] == busybox_image.digest
    await second.close()


async def test_unresolvable_user_fails_at_process(
    tmp_path: Path, layered: bool, busybox_image: BuiltImage
):
    built = build_image(tmp_path / "ghost.tar", user="ghost")
    cache = await ImageCache.open(root=tmp_path / "cache", max_bytes=1 << 30, layered=layered)
    image = await cache.ensure(built.digest, copy_from(built.path))
    assert image.user is None
    with pytest.raises(InvalidInput, match="'ghost' is not in the image's /etc/passwd"):
        image.process()
    await cache.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.requires_root
async def test_unpacked_busybox_image_serves_http(cache: ImageCache, busybox_image: BuiltImage):
    """The factory's image really runs: chroot into the unpacked tree as the image user."""
    image = await cache.ensure(busybox_image.digest, copy_from(busybox_image.path))
    process = image.process()
    port = _free_port()
    argv = [a if a != "8080" else f"127.0.0.1:{port}" for a in process.argv]
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    with cache.view(image) as tree:
        await _serve(chroot, process.user, tree, argv, dict(process.env), port)


async def _serve(
    chroot: str, user: str, tree: Path, argv: list[str], env: dict[str, str], port: int
) -> None:
    proc = subprocess.Popen([chroot, f"--userspec={user}", str(tree), *argv], env=env)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    assert r.status == 200
                    assert r.read() == b"ok\n"
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                await asyncio.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(5)


async def test_layers_cannot_write_through_symlinks(cache: ImageCache, tmp_path: Path):
    """Layer 1 plants a symlink to a host directory; layer 2 writes through it. umoci must
    resolve it inside the tree, so nothing lands on the host."""
    outside = tmp_path / "outside"
    outside.mkdir()
    layers = [
        [Entry("escape", symlink=str(outside), mode=0o777), Entry("up", symlink="../../../..")],
        [Entry("escape/pwned", b"x"), Entry("up/pwned2", b"y")],
    ]
    built = build_image(tmp_path / "evil.tar", layers=layers, cmd=["/x"], user="", ports=())
    image = await cache.ensure(built.digest, copy_from(built.path))
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "pwned2").exists()
    assert not (cache.root / "pwned2").exists()
    with cache.view(image) as tree:
        if cache.layered:  # layer 2's own directory hides layer 1's symlink (as overlay2)
            assert (tree / "escape" / "pwned").read_bytes() == b"x"
            assert (tree / "up" / "pwned2").read_bytes() == b"y"
        else:  # umoci resolves the symlink inside the tree
            inside = tree / str(outside).lstrip("/") / "pwned"
            assert inside.read_bytes() == b"x"


async def test_room_is_made_before_unpacking_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from zeitwork.images import umoci

    images = {n: tiny_image(tmp_path / f"{n}.tar", n, 400_000) for n in "abc"}
    cache = await ImageCache.open(root=tmp_path / "cache", max_bytes=1_000_000, layered=False)
    for name in "ab":
        await cache.ensure(images[name].digest, copy_from(images[name].path), acquire=False)
    seen_at_unpack: list[list[str]] = []
    original = umoci.raw_unpack

    async def spy(*args: object, **kwargs: object) -> None:
        seen_at_unpack.append([e.digest for e in cache.entries()])
        await original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(umoci, "raw_unpack", spy)
    await cache.ensure(images["c"].digest, copy_from(images["c"].path), acquire=False)
    assert seen_at_unpack == [[images["b"].digest]]  # a (LRU) went before c was unpacked
    await cache.close()
