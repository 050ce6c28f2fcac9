"""The layer store with real files, real overlayfs and real umoci: each layer unpacked once
into its own directory with overlayfs whiteouts, hostile layers refused, the merged view
compared file by file with ``umoci raw unpack`` of the same image, single flight, reference
counts and LRU removal under the cap, an older whole-image cache still served."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.images import MTIME, Entry, build_image, gzip_bytes, write_archive
from zeitwork.core.errors import InvalidInput
from zeitwork.images import Fetch, ImageCache
from zeitwork.images.unpack import OPAQUE_XATTR, unpack_layer

pytestmark = [
    pytest.mark.requires_root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the layer store needs root"),
]


def copy_from(source: Path) -> Fetch:
    async def fetch(dest: Path) -> None:
        await asyncio.to_thread(shutil.copyfile, source, dest)

    return fetch


@dataclass
class T:
    """A raw tar entry for hostile and whiteout layers."""

    name: str
    kind: str = "file"  # file, dir, symlink, hardlink, char, block, fifo
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    device: tuple[int, int] = (0, 0)
    pax: dict[str, str] | None = None


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def raw_tar(entries: list[T]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = _TYPES[entry.kind]
            info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, MTIME
            info.linkname = entry.link
            info.devmajor, info.devminor = entry.device
            if entry.pax:
                info.pax_headers = dict(entry.pax)
            if entry.kind == "file":
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def unpack(tmp_path: Path, entries: list[T], *, gz: bool = True) -> Path:
    plain = raw_tar(entries)
    blob = tmp_path / "layer.blob"
    blob.write_bytes(gzip_bytes(plain) if gz else plain)
    dest = tmp_path / "layer"
    dest.mkdir()
    digest = "sha256:" + hashlib.sha256(plain).hexdigest()
    unpack_layer(blob, dest, diff_id=digest, what="layer 0")
    return dest


def is_whiteout(path: Path) -> bool:
    info = path.lstat()
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(0, 0)


def opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def test_oci_whiteouts_become_overlay_whiteouts(tmp_path: Path) -> None:
    layer = unpack(
        tmp_path,
        [
            T("etc", "dir", mode=0o755),
            T("etc/.wh.motd"),
            T("etc/kept"),
            T("etc/.wh.kept"),  # this layer's own file: not hidden
            T("var", "dir", mode=0o755),
            T("var/cache", "dir", mode=0o700, uid=5, gid=6),
            T("var/cache/.wh..wh..opq"),
            T("var/cache/new", data=b"n"),
            T(".wh.srv"),
            T("srv", "dir", mode=0o755),  # removed, then made again in this layer
            T("srv/x", data=b"x"),
            T(".wh..wh.plnk"),  # aufs metadata: nothing
        ],
    )
    assert is_whiteout(layer / "etc/motd")
    assert (layer / "etc/kept").is_file() and not is_whiteout(layer / "etc/kept")
    assert opaque(layer / "var/cache") and not opaque(layer / "var")
    assert (layer / "var/cache/new").read_bytes() == b"n"
    info = (layer / "var/cache").stat()
    assert (info.st_mode & 0o7777, info.st_uid, info.st_gid) == (0o700, 5, 6)
    assert (layer / "srv").is_dir() and opaque(layer / "srv")
    assert sorted(p.name for p in layer.iterdir()) == ["etc", "srv", "var"]


OUTSIDE = "/tmp/zeitwork-layer-test-outside"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([T("../evil")], "unsafe path"),
        ([T("a/../../evil")], "unsafe path"),
        ([T("/abs/evil")], "unsafe path"),
        ([T("a", "symlink", link=OUTSIDE), T("a/pwned")], "passes through the symlink 'a'"),
        ([T("up", "symlink", link="../../.."), T("up/x")], "passes through the symlink 'up'"),
        (
            [T("d", "dir"), T("d/l", "symlink", link="/etc"), T("d/l/passwd")],
            "passes through the symlink 'd/l'",
        ),
        ([T("f", data=b"1"), T("f/child")], "not a directory"),
        ([T("h", "hardlink", link="../../etc/passwd")], "hard link"),
        ([T("h", "hardlink", link="/etc/passwd")], "hard link"),
        ([T("h", "hardlink", link="in-a-lower-layer")], "hard link"),
        ([T("d", "dir"), T("h", "hardlink", link="d")], "hard link"),
        ([T("etc/sda", "block", device=(8, 0))], "device file"),
        ([T("etc/mem", "char", device=(1, 1))], "device file"),
        ([T("etc/wh", "char", device=(0, 0))], "device file"),  # whiteouts come as .wh.
        ([T(".wh.../../x")], "unsafe path"),
    ],
)
def test_hostile_layers_are_refused(tmp_path: Path, entries: list[T], message: str) -> None:
    outside = Path(OUTSIDE)
    shutil.rmtree(outside, ignore_errors=True)
    outside.mkdir()
    try:
        with pytest.raises(InvalidInput, match=message) as info:
            unpack(tmp_path, entries)
        assert "layer 0 entry" in info.value.detail
        assert list(outside.iterdir()) == []
        assert not (tmp_path / "evil").exists()
        assert not (tmp_path.parent / "evil").exists()
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_what_a_layer_may_not_set_is_dropped(tmp_path: Path) -> None:
    layer = unpack(
        tmp_path,
        [
            T("dev", "dir", mode=0o755),
            T("dev/null", "char", device=(1, 3), mode=0o666),  # the runtime brings its /dev
            T(
                "d",
                "dir",
                pax={"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.k": "v"},
            ),
            T("bin", "dir"),
            T("bin/ping", data=b"p", mode=0o4755, pax={"SCHILY.xattr.user.cap": "c"}),
            T("pipe", "fifo"),
            T("abs", "symlink", link="/etc/passwd"),  # kept as it is, never followed
        ],
    )
    assert not (layer / "dev/null").exists()
    assert not opaque(layer / "d")
    assert os.getxattr(layer / "d", "user.k") == b"v"
    assert os.getxattr(layer / "bin/ping", "user.cap") == b"c"
    assert (layer / "bin/ping").stat().st_mode & 0o7777 == 0o4755
    assert stat.S_ISFIFO((layer / "pipe").lstat().st_mode)
    assert os.readlink(layer / "abs") == "/etc/passwd"


def test_a_layer_must_match_its_diff_id_and_digest(tmp_path: Path) -> None:
    plain = raw_tar([T("a", data=b"a")])
    blob = tmp_path / "blob"
    blob.write_bytes(gzip_bytes(plain))
    (tmp_path / "one").mkdir()
    with pytest.raises(InvalidInput, match="does not match its diff_id"):
        unpack_layer(blob, tmp_path / "one", diff_id="sha256:" + "0" * 64)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    (tmp_path / "two").mkdir()
    good = "sha256:" + hashlib.sha256(gzip_bytes(plain)).hexdigest()
    with pytest.raises(InvalidInput, match="does not match its sha256"):
        unpack_layer(blob, tmp_path / "two", digest=good)


# ---- the merged view against umoci ------------------------------------------------------


def layered_image(tmp_path: Path) -> Path:
    """Three layers with what whiteouts must get right: deleted files and directories,
    opaque directories, types replaced, hard links, owners, modes, symlinks."""
    layers = [
        [
            T("etc", "dir", mode=0o755),
            T("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"),
            T("etc/group", data=b"root:x:0:\n"),
            T("etc/motd", data=b"hello\n"),
            T("etc/conf.d", "dir", mode=0o755),
            T("etc/conf.d/a", data=b"a"),
            T("etc/conf.d/b", data=b"b"),
            T("var", "dir", mode=0o755),
            T("var/cache", "dir", mode=0o755),
            T("var/cache/old1", data=b"1"),
            T("var/cache/sub", "dir"),
            T("var/cache/sub/old2", data=b"2"),
            T("opt", "dir", mode=0o755),
            T("opt/tool", data=b"#!/bin/sh\n", mode=0o4755, uid=12, gid=34),
            T("opt/link", "hardlink", link="opt/tool"),
            T("lib", "dir", mode=0o755),
            T("lib/dir-becomes-file", "dir"),
            T("lib/dir-becomes-file/x", data=b"x"),
            T("lib/file-becomes-dir", data=b"f"),
            T("lib/sym", "symlink", link="/etc/motd"),
            T("home", "dir", mode=0o755),
            T("home/app", "dir", mode=0o750, uid=1000, gid=1000),
            T("home/app/.profile", data=b"p", uid=1000, gid=1000, mode=0o600),
        ],
        [
            T("etc", "dir", mode=0o755),
            T("etc/.wh.motd"),
            T("etc/conf.d", "dir", mode=0o755),
            T("etc/conf.d/.wh..wh..opq"),
            T("etc/conf.d/c", data=b"c"),
            T("var", "dir", mode=0o755),
            T("var/.wh.cache"),
            T("lib", "dir", mode=0o755),
            T("lib/.wh.dir-becomes-file"),
            T("lib/dir-becomes-file", data=b"now a file"),
            T("lib/.wh.file-becomes-dir"),
            T("lib/file-becomes-dir", "dir", mode=0o711),
            T("lib/file-becomes-dir/in", data=b"in"),
            T("lib/sym", "symlink", link="../etc/passwd"),
            T("opt", "dir", mode=0o755),
            T("opt/new", data=b"n", mode=0o640, uid=7, gid=8),
        ],
        [
            T("var", "dir", mode=0o755),
            T("var/cache", "dir", mode=0o700),  # back, empty: nothing of layer 1 shows
            T("var/cache/fresh", data=b"f"),
            T("home", "dir", mode=0o755),
            T("home/.wh.app"),
            T("etc", "dir", mode=0o755),
            T("etc/conf.d", "dir", mode=0o755),
            T("etc/conf.d/.wh.c"),
            T("etc/conf.d/d", data=b"d"),
            T("app", "dir", mode=0o755),
            T("app/main.py", data=b"print('v1')\n", mode=0o755),
        ],
    ]
    files = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}
    blobs: dict[str, bytes] = {}
    descs, diff_ids = [], []
    for entries in layers:
        plain = raw_tar(entries)
        blob = gzip_bytes(plain)
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        blobs[digest] = blob
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest,
                "size": len(blob),
            }
        )
        diff_ids.append("sha256:" + hashlib.sha256(plain).hexdigest())
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/app/main.py"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_blob = json.dumps(config, sort_keys=True).encode()
    config_digest = "sha256:" + hashlib.sha256(config_blob).hexdigest()
    blobs[config_digest] = config_blob
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_blob),
        },
        "layers": descs,
    }
    manifest_blob = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = "sha256:" + hashlib.sha256(manifest_blob).hexdigest()
    blobs[manifest_digest] = manifest_blob
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest[7:]] = data
    files["index.json"] = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": manifest["mediaType"],
                    "digest": manifest_digest,
                    "size": len(manifest_blob),
                    "annotations": {"org.opencontainers.image.ref.name": "zeitwork"},
                }
            ],
        }
    ).encode()
    archive = write_archive(tmp_path / "layered.tar", files)
    (tmp_path / "digest").write_text(manifest_digest)
    return archive


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``root``: type, mode, owner, and content / target / device."""
    found: dict[str, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], str] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(directory, name)
            rel = str(path.relative_to(root))
            info = path.lstat()
            mode = stat.S_IMODE(info.st_mode)
            head = (stat.S_IFMT(info.st_mode), mode, info.st_uid, info.st_gid)
            if stat.S_ISREG(info.st_mode):
                body: object = hashlib.sha256(path.read_bytes()).hexdigest()
                found[rel] = (*head, body, info.st_mtime)
                if info.st_nlink > 1:
                    inodes.setdefault((info.st_dev, info.st_ino), rel)
            elif stat.S_ISLNK(info.st_mode):
                found[rel] = (*head, os.readlink(path))
            elif stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode):
                found[rel] = (*head, info.st_rdev)
            else:
                found[rel] = head
    return found


async def test_the_merged_view_matches_umoci_unpack(tmp_path: Path) -> None:
    archive = layered_image(tmp_path)
    digest = (tmp_path / "digest").read_text()
    # umoci of the same image, from the same layout
    layout = tmp_path / "layout"
    layout.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="data")
    flat = tmp_path / "umoci"
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:zeitwork", str(flat)], check=True
    )
    cache = await ImageCache.open(root=tmp_path / "cache", max_bytes=1 << 30, layered=True)
    try:
        image = await cache.ensure(digest, copy_from(archive))
        assert len(image.layers) == 3
        with cache.view(image) as tree:
            merged = snapshot(tree)
        expected = snapshot(flat)
        assert merged.keys() == expected.keys()
        for path in expected:
            assert merged[path] == expected[path], path
        # what the whiteouts had to get right, spelled out
        assert "etc/motd" not in merged
        assert sorted(k for k in merged if k.startswith("etc/conf.d/")) == ["etc/conf.d/d"]
        assert sorted(k for k in merged if k.startswith("var/cache/")) == ["var/cache/fresh"]
        assert "home/app" not in merged
        assert merged["lib/dir-becomes-file"][0] == stat.S_IFREG
        assert merged["lib/file-becomes-dir/in"][0] == stat.S_IFREG
        assert merged["opt/tool"][1:3] == (0o4755, 12)
    finally:
        await cache.close()


# ---- the store: once per layer, references, removal, restart ------------------------------


def versions(tmp_path: Path, count: int, base_size: int = 200_000) -> list[tuple[Path, str]]:
    """``count`` images sharing a base layer, each with its own top layer."""
    base = [Entry("data", mode=0o755), Entry("data/base", os.urandom(base_size))]
    built = []
    for i in range(count):
        top = [Entry("app", mode=0o755), Entry("app/v", f"{i}\n".encode() * 1000)]
        image = build_image(
            tmp_path / f"v{i}.tar",
            layers=[base, top],
            entrypoint=None,
            cmd=["/x"],
            user="",
            ports=(),
        )
        built.append((image.path, image.digest))
    return built


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[ImageCache]:
    cache = await ImageCache.open(root=tmp_path / "cache", max_bytes=1 << 30, layered=True)
    yield cache
    await cache.close()


async def test_two_images_starting_together_unpack_their_shared_layer_once(
    cache: ImageCache, tmp_path: Path
) -> None:
    (one, d1), (two, d2), (three, d3) = versions(tmp_path, 3)
    a, b = await asyncio.gather(cache.ensure(d1, copy_from(one)), cache.ensure(d2, copy_from(two)))
    store = cache.layer_store
    assert store is not None
    assert len(store.unpacked) == 3 == len(set(store.unpacked))  # base once, two tops
    assert a.layers[1] == b.layers[1]  # one directory for the base
    assert store.refs(a.diff_ids[0]) == 2
    with cache.view(a) as tree:
        assert (tree / "app/v").read_bytes().startswith(b"0\n")
    with cache.view(b) as tree:
        assert (tree / "app/v").read_bytes().startswith(b"1\n")
    # a new version: only its top layer is unpacked
    c = await cache.ensure(d3, copy_from(three))
    assert store.unpacked[3:] == [c.diff_ids[1]]
    assert store.refs(a.diff_ids[0]) == 3


async def test_a_layer_in_use_is_never_removed(tmp_path: Path) -> None:
    built = versions(tmp_path, 3, base_size=300_000)
    # room for the base layer (300 kB) and two top layers (8 kB each), not three
    cache = await ImageCache.open(root=tmp_path / "cache", max_bytes=328_000, layered=True)
    store = cache.layer_store
    assert store is not None
    try:
        held = await cache.ensure(built[0][1], copy_from(built[0][0]))  # referenced
        second = await cache.ensure(built[1][1], copy_from(built[1][0]), acquire=False)
        base, top1 = second.diff_ids
        assert cache.get(second.digest) is not None  # under the cap: base + 2 small tops
        # the third pushes it over: the unused image goes, its own top layer with it;
        # the shared base stays (the held image uses it), as do the held image's layers
        third = await cache.ensure(built[2][1], copy_from(built[2][0]), acquire=False)
        assert cache.get(second.digest) is None
        assert not store.has(top1)
        assert store.has(base) and store.has(held.diff_ids[1])
        assert cache.get(third.digest) is not None
        for layer in held.layers:
            assert layer.is_dir()
        # nothing unused fits under a tiny cap: everything but the held image goes
        await asyncio.to_thread(store.wait_flushed)  # (a marker written late is harmless)
        cache.max_bytes = 1
        assert await cache.evict() == [third.digest]
        assert sorted(e.diff_id for e in store.entries()) == sorted(held.diff_ids)
        cache.release(held.digest)
        assert await cache.evict() == [held.digest]
        assert store.entries() == [] and cache.used_bytes == 0
        assert sorted(p.name for p in store.root.iterdir()) == ["tmp"]
        assert [p.name for p in (store.root / "tmp").iterdir()] == ["empty"]
    finally:
        await cache.close()


async def test_restart_finds_the_layers_and_drops_what_is_not_whole(tmp_path: Path) -> None:
    (path, digest), (path2, digest2) = versions(tmp_path, 2)
    root = tmp_path / "cache"
    first = await ImageCache.open(root=root, max_bytes=1 << 30, layered=True)
    image = await first.ensure(digest, copy_from(path))
    other = await first.ensure(digest2, copy_from(path2))
    await first.close()
    # the second image's top layer lost its completion marker (a crash before the sync)
    (root / "layers" / f"{other.diff_ids[1][7:]}.json").unlink()

    async def must_not_fetch(dest: Path) -> None:
        raise AssertionError("the image should come from disk")

    second = await ImageCache.open(root=root, max_bytes=1 << 30, layered=True)
    try:
        again = await second.ensure(digest, must_not_fetch)
        assert again == image
        assert second.get(digest2) is None  # its layer is gone, so is the image
        store = second.layer_store
        assert store is not None
        assert not store.has(other.diff_ids[1]) and store.has(other.diff_ids[0])
        assert store.refs(image.diff_ids[0]) == 1  # held by the one image left
        assert store.refs(other.diff_ids[0]) == 1  # the same base layer
    finally:
        await second.close()


async def test_an_image_unpacked_whole_before_keeps_working(tmp_path: Path) -> None:
    (path, digest), (path2, digest2) = versions(tmp_path, 2)
    root = tmp_path / "cache"
    old = await ImageCache.open(root=root, max_bytes=1 << 30, layered=False)
    whole = await old.ensure(digest, copy_from(path))
    await old.close()
    cache = await ImageCache.open(root=root, max_bytes=1 << 30, layered=True)
    try:
        image = cache.get(digest)
        assert image is not None
        assert image == whole and image.layers == ()
        with cache.view(image) as tree:
            assert tree == whole.rootfs
            assert (tree / "app/v").read_bytes().startswith(b"0\n")
        layered = await cache.ensure(digest2, copy_from(path2))
        assert len(layered.layers) == 2
        store = cache.layer_store
        assert store is not None
        assert cache.used_bytes == whole.size + sum(store.size(d) for d in layered.diff_ids)
    finally:
        await cache.close()


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="needs e2fsprogs")
async def test_the_firecracker_ext4_image_is_built_from_the_merged_layers(tmp_path: Path) -> None:
    from tests.images import busybox_path
    from zeitwork.runtime.firecracker.rootfs import RootfsStore

    archive = layered_image(tmp_path)
    digest = (tmp_path / "digest").read_text()
    cache = await ImageCache.open(root=tmp_path / "cache", max_bytes=1 << 30, layered=True)
    try:
        image = await cache.ensure(digest, copy_from(archive))
        store = RootfsStore(directory=tmp_path / "ext4", busybox=busybox_path(), headroom_mib=8)
        ext4 = await store.ensure(digest, image.rootfs, layers=image.layers)

        def debugfs(command: str) -> str:
            done = subprocess.run(
                ["debugfs", "-R", command, str(ext4)], check=True, capture_output=True, text=True
            )
            return done.stdout

        def names(directory: str) -> set[str]:  # ls -p: /inode/mode/uid/gid/name/size/
            lines = debugfs(f"ls -p {directory}").splitlines()
            return {line.split("/")[5] for line in lines if line.startswith("/")} - {".", ".."}

        assert debugfs("cat /app/main.py") == "print('v1')\n"
        assert "motd" not in names("/etc")  # whited out in layer 2
        assert names("/etc/conf.d") == {"d"}  # opaque in layer 2, c whited out in layer 3
        assert names("/var/cache") == {"fresh"}
        assert sorted(p.name for p in (tmp_path / "ext4").iterdir()) == [ext4.name]  # no view
    finally:
        await cache.close()


async def test_an_unflushed_layer_a_running_instance_uses_is_kept(tmp_path: Path) -> None:
    from zeitwork.runtime.oci import mounts

    (path, digest), *_ = versions(tmp_path, 1)
    root = tmp_path / "cache"
    first = await ImageCache.open(root=root, max_bytes=1 << 30, layered=True)
    image = await first.ensure(digest, copy_from(path))
    await first.close()
    top = image.diff_ids[1]
    (root / "layers" / f"{top[7:]}.json").unlink()  # the agent died before the flush...
    instance = tmp_path / "instance"
    for name in ("upper", "work", "rootfs"):
        (instance / name).mkdir(parents=True)
    mounts.mount_overlay(  # ... while an instance runs on the layer
        lower=image.layers,
        upper=instance / "upper",
        work=instance / "work",
        target=instance / "rootfs",
    )
    try:
        second = await ImageCache.open(root=root, max_bytes=1 << 30, layered=True)
        try:
            kept = second.get(digest)
            assert kept is not None and kept.layers == image.layers
            assert (root / "layers" / f"{top[7:]}.json").is_file()  # flushed, marked
            assert (instance / "rootfs" / "app/v").read_bytes().startswith(b"0\n")
        finally:
            await second.close()
    finally:
        mounts.unmount(instance / "rootfs")
