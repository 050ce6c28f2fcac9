from __future__ import annotations

import asyncio
from pathlib import Path

from zeitwork.runtime.oci import logfiles


def _write(path: Path, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(text)


def test_rotation_caps_the_size_and_keeps_two_files(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    assert logfiles.rotate(log, max_bytes=10, keep=2) is False  # missing: nothing to do
    for batch in ("a\nb\n", "c\nd\n", "e\nf\n"):
        _write(log, batch * 3)
        assert logfiles.rotate(log, max_bytes=10, keep=2) is True
        assert log.stat().st_size == 0
    assert (tmp_path / "console.log.1").read_text() == "e\nf\n" * 3
    assert (tmp_path / "console.log.2").read_text() == "c\nd\n" * 3
    assert not (tmp_path / "console.log.3").exists()
    _write(log, "g\n")
    assert logfiles.rotate(log, max_bytes=10, keep=2) is False
    # tail reads across the rotated files, newest last
    assert logfiles.tail(log, 3, keep=2) == ["e", "f", "g"]
    assert logfiles.tail(log, 0, keep=2) == []
    assert len(logfiles.tail(log, 100, keep=2)) == 13


def test_tail_up_to_a_byte_offset(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    _write(log, "one\ntwo\nthree\n")
    end = logfiles.size_of(log)
    _write(log, "four\n")
    assert logfiles.tail(log, 2, keep=2, end=end) == ["two", "three"]
    assert logfiles.size_of(tmp_path / "missing") == 0


def test_tail_of_a_large_file_reads_only_its_end(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    _write(log, "".join(f"line {i}\n" for i in range(200_000)))
    assert logfiles.tail(log, 2, keep=2) == ["line 199998", "line 199999"]


async def test_follow_continues_exactly_where_the_tail_stopped(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    _write(log, "old\n")
    start = logfiles.size_of(log)
    _write(log, "new1\n")
    alive = [True]

    async def writer() -> None:
        await asyncio.sleep(0.05)
        _write(log, "new2\npartial")
        await asyncio.sleep(0.05)
        alive[0] = False

    task = asyncio.create_task(writer())
    lines = [
        line async for line in logfiles.follow(log, alive=lambda: alive[0], poll=0.01, start=start)
    ]
    await task
    assert lines == ["new1", "new2", "partial"]


async def test_follow_survives_rotation(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    _write(log, "x" * 50 + "\n")
    alive = [True]

    async def writer() -> None:
        await asyncio.sleep(0.05)
        logfiles.rotate(log, max_bytes=10, keep=2)
        _write(log, "after\n")
        await asyncio.sleep(0.05)
        alive[0] = False

    task = asyncio.create_task(writer())
    lines = [line async for line in logfiles.follow(log, alive=lambda: alive[0], poll=0.01)]
    await task
    assert lines == ["after"]
