"""Build contexts: what pack takes, that it is deterministic, and that unpack refuses
hostile archives and leaves nothing behind."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zeitwork.builds.context import ContextError, ContextTooLarge, pack, unpack

LIMIT = 1 << 20


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        return tar.getnames()


def _pack(directory: Path, limit: int = LIMIT) -> tuple[bytes, str]:
    out = io.BytesIO()
    info = pack(directory, out, limit=limit)
    data = out.getvalue()
    assert info.size == len(data)
    assert info.files == len(_names(data))
    return data, info.sha256


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


# ------------------------------------------------------------------------------ pack


def test_plain_directory_honours_dockerignore_and_gitignore(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "app.py": "print('hi')\n",
            "README.md": "readme\n",
            "docs/guide.md": "guide\n",
            "build/out.bin": "x",
            "keep.log": "keep",
            "other.log": "drop",
            "sub/.gitignore": "local.txt\n",
            "sub/local.txt": "drop",
            "sub/kept.txt": "keep",
            "secrets/.env": "TOKEN=1",
            ".gitignore": "build/\n*.log\n!keep.log\n",
            ".dockerignore": "# comment\n*.md\nsecrets\n",
        },
    )
    (tmp_path / ".git").mkdir()  # a stray .git directory (not a work tree) is never packed
    (tmp_path / ".git" / "config").write_text("x")
    data, _ = _pack(tmp_path)
    assert sorted(_names(data)) == [
        ".dockerignore",
        ".gitignore",
        "app.py",
        # .dockerignore patterns are anchored at the root: *.md does not reach docs/
        "docs/guide.md",
        "keep.log",
        "sub/.gitignore",
        "sub/kept.txt",
    ]


def test_dockerignore_double_star_and_reinclude(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "a/node_modules/x.js": "",
            "node_modules/y.js": "",
            "src/main.js": "",
            "src/test.tmp": "",
            "important.tmp": "",
        },
    )
    (tmp_path / ".dockerignore").write_text("**/node_modules\n**/*.tmp\n!important.tmp\n")
    data, _ = _pack(tmp_path)
    assert sorted(_names(data)) == [".dockerignore", "important.tmp", "src/main.js"]


def test_git_checkout_packs_tracked_and_untracked_unignored_files(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {"app.py": "1", ".gitignore": "*.pyc\n", "cache.pyc": "x", "new.txt": "untracked"},
    )
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "app.py", ".gitignore")
    _git(tmp_path, "commit", "-q", "-m", "init")
    _write(tmp_path, {"gone.txt": "x"})
    _git(tmp_path, "add", "gone.txt")
    (tmp_path / "gone.txt").unlink()  # tracked, deleted in the work tree: skipped
    # a .dockerignore is not consulted for a git checkout: git decides
    data, _ = _pack(tmp_path)
    assert sorted(_names(data)) == [".gitignore", "app.py", "new.txt"]


def test_git_subdirectory_packs_paths_relative_to_it(tmp_path: Path) -> None:
    _write(tmp_path, {"top.txt": "", "svc/app.py": "", "svc/lib/x.py": ""})
    _git(tmp_path, "init", "-q")
    data, _ = _pack(tmp_path / "svc")
    assert sorted(_names(data)) == ["app.py", "lib/x.py"]


def test_pack_is_deterministic_and_ignores_mtimes(tmp_path: Path) -> None:
    _write(tmp_path, {"b.txt": "b", "a/x.txt": "x", "run.sh": "#!/bin/sh\n"})
    (tmp_path / "run.sh").chmod(0o755)
    (tmp_path / "link").symlink_to("a/x.txt")
    first, sha1 = _pack(tmp_path)
    os.utime(tmp_path / "b.txt", (1, 1))
    second, sha2 = _pack(tmp_path)
    assert first == second
    assert sha1 == sha2
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == ["a/x.txt", "b.txt", "link", "run.sh"]
    assert members["run.sh"].mode == 0o755
    assert members["b.txt"].mode == 0o644
    assert members["link"].issym()
    assert members["link"].linkname == "a/x.txt"
    assert {m.uid for m in members.values()} == {0}
    (tmp_path / "b.txt").write_text("changed")
    _, sha3 = _pack(tmp_path)
    assert sha3 != sha1


def test_pack_refuses_a_context_over_the_limit(tmp_path: Path) -> None:
    _write(tmp_path, {"a": "x" * 600, "b": "y" * 600})
    out = io.BytesIO()
    with pytest.raises(ContextTooLarge, match="1200 bytes, over the limit of 1000"):
        pack(tmp_path, out, limit=1000)
    assert out.getvalue() == b""


def test_pack_refuses_a_symlink_out_of_the_context(tmp_path: Path) -> None:
    (tmp_path / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ContextError, match="passwd is a symlink pointing outside"):
        pack(tmp_path, io.BytesIO(), limit=LIMIT)


def test_pack_then_unpack_round_trips(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write(src, {"a/b/c.txt": "deep", "top.txt": "top"})
    (src / "a" / "alias").symlink_to("b/c.txt")
    archive = tmp_path / "ctx.tar.gz"
    with archive.open("wb") as f:
        pack(src, f, limit=LIMIT)
    dest = tmp_path / "out"
    unpack(archive, dest, limit=LIMIT)
    assert (dest / "a/b/c.txt").read_text() == "deep"
    assert (dest / "top.txt").read_text() == "top"
    assert os.readlink(dest / "a/alias") == "b/c.txt"


# ---------------------------------------------------------------------------- unpack


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


HOSTILE = {
    "dotdot": ([_file("ok.txt"), _file("../escape.txt")], "'../escape.txt' contains '..'"),
    "nested dotdot": ([_file("a/../../x")], "contains '..'"),
    "absolute": ([_file("/etc/cron.d/x")], "'/etc/cron.d/x' is an absolute path"),
    "symlink absolute": ([_link("etc", "/etc")], "'etc' is a symlink pointing outside"),
    "symlink up": ([_link("a/up", "../../x")], "'a/up' is a symlink pointing outside"),
    "through symlink": (
        [_link("inner", "sub"), _file("inner/x")],
        "'inner/x' passes through the symlink 'inner'",
    ),
    "symlink chain": (
        [_link("t", "d/a/b/s/.."), _link("d/a/b/s", "../../..")],
        "'t' is a symlink that resolves outside",
    ),
    "hard link out": ([_link("h", "/etc/passwd", tarfile.LNKTYPE)], "absolute path"),
    "hard link to nothing": (
        [_link("h", "missing", tarfile.LNKTYPE)],
        "'h' is a hard link to 'missing', which is not a file earlier",
    ),
    "char device": ([_special("null", tarfile.CHRTYPE)], "'null' is a character device"),
    "block device": ([_special("sda", tarfile.BLKTYPE)], "'sda' is a block device"),
    "fifo": ([_special("pipe", tarfile.FIFOTYPE)], "'pipe' is a fifo"),
    "duplicate": ([_file("a"), _file("./a")], "'./a' appears twice"),
    "file then inside it": ([_file("a"), _file("a/b")], "'a/b' is inside 'a', which is a file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_unpack_refuses_hostile_archives_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    members, message = HOSTILE[case]
    archive = _archive(tmp_path / "evil.tar", members)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ContextError, match=message):
        unpack(archive, work / "ctx", limit=LIMIT)
    assert list(work.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists()


def test_unpack_refuses_past_the_size_limit(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "big.tar", [_file("a", b"x" * 600), _file("b", b"y" * 600)])
    work = tmp_path / "work"
    message = re.escape("exceeds the limit of 1000 bytes (at 'b')")
    with pytest.raises(ContextTooLarge, match=message):
        unpack(archive, work / "ctx", limit=1000)
    assert list(work.iterdir()) == []


def test_unpack_refuses_garbage(tmp_path: Path) -> None:
    archive = tmp_path / "junk.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(ContextError, match="not a readable tar"):
        unpack(archive, tmp_path / "ctx", limit=LIMIT)
    assert not (tmp_path / "ctx").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ContextError, match="not a readable tar"):
        unpack(archive, tmp_path / "empty", limit=LIMIT)
    assert list((tmp_path / "empty").iterdir()) == []  # left as it was


def test_unpack_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "ok.tar", [_file("a")])
    dest = tmp_path / "ctx"
    dest.mkdir()
    (dest / "old").write_text("x")
    with pytest.raises(ContextError, match="not an empty directory"):
        unpack(archive, dest, limit=LIMIT)


def test_unpack_accepts_inner_hard_links_and_normalises_modes(tmp_path: Path) -> None:
    setuid = tarfile.TarInfo("tool")
    setuid.mode = 0o4755
    archive = _archive(
        tmp_path / "ok.tar",
        [(setuid, b"#!/bin/sh\n"), _file("d/a", b"data"), _link("d/b", "d/a", tarfile.LNKTYPE)],
    )
    dest = tmp_path / "ctx"
    dest.mkdir()  # an empty destination is replaced
    unpack(archive, dest, limit=LIMIT)
    assert (dest / "d/b").read_bytes() == b"data"
    assert (dest / "tool").stat().st_mode & 0o7777 == 0o755


_segment = st.sampled_from(["a", "b", "..", ".", "", "/", "c d", "x" * 3])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(st.lists(_segment, min_size=1, max_size=4).map("/".join), max_size=5),
    links=st.lists(
        st.tuples(
            st.lists(_segment, min_size=1, max_size=3).map("/".join),
            st.lists(_segment, min_size=1, max_size=4).map("/".join),
        ),
        max_size=3,
    ),
)
def test_unpack_never_writes_outside_dest(
    tmp_path: Path, names: list[str], links: list[tuple[str, str]]
) -> None:
    case = tmp_path / "case"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir()
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for name, target in links:
        if name.strip("/."):
            members.append(_link(name, target))
    members += [_file(n) for n in names if n.strip("/.")]
    archive = _archive(case / "a.tar", members)
    sandbox = case / "sandbox"
    sandbox.mkdir()
    try:
        unpack(archive, sandbox / "ctx", limit=LIMIT)
    except ContextError:
        assert sorted(p.name for p in sandbox.iterdir()) == []
        return
    assert sorted(p.name for p in case.iterdir()) == ["a.tar", "sandbox"]
    assert sorted(p.name for p in sandbox.iterdir()) == ["ctx"]
    real = os.path.realpath(sandbox / "ctx")
    for dirpath, dirnames, filenames in os.walk(sandbox / "ctx"):
        for entry in dirnames + filenames:
            resolved = os.path.realpath(Path(dirpath) / entry)
            assert resolved == real or resolved.startswith(real + os.sep)
