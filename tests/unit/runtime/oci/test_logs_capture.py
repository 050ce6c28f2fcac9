"""The console capture (``logshim.py``) and its records: a line's time is when it was read
from the pipe, stdout and stderr apart, long and unfinished lines split with a flag, the
file renamed away at its cap with no line lost; records parsed back, plain (older) lines
kept; ``follow`` reading on through a rename. The capture runs as the real process."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime
from pathlib import Path

import pytest

from zeitwork.runtime.base import LogEntry
from zeitwork.runtime.oci import logfiles, logshim

NS = 1_000_000_000
T = 1_796_612_400 * NS  # 2026-12-07T03:00:00Z


def _parse(records: list[bytes]) -> list[LogEntry]:
    out = []
    for record in records:
        entry = logfiles.parse_record(record.decode().removesuffix("\n"))
        assert entry is not None, record
        out.append(entry)
    return out


def test_stamps_are_fixed_width_utc_with_nanoseconds() -> None:
    assert logshim.stamp(T + 5) == b"2026-12-07T03:00:00.000000005Z"
    assert logshim.stamp(T + NS - 1) == b"2026-12-07T03:00:00.999999999Z"


def test_lines_are_stamped_by_when_their_first_byte_came() -> None:
    out = logshim.Splitter(b"stdout")
    assert out.feed(b"one\ntw", T) == [b"2026-12-07T03:00:00.000000000Z stdout F one\n"]
    assert out.due() == T + NS // 2
    assert _parse(out.feed(b"o\n\n", T + 7)) == [
        LogEntry("two", "stdout", "2026-12-07T03:00:00.000000000Z"),
        LogEntry("", "stdout", "2026-12-07T03:00:00.000000007Z"),
    ]
    assert out.due() is None


def test_a_long_line_is_split_into_partial_pieces_ending_with_a_full_one() -> None:
    err = logshim.Splitter(b"stderr", line_max=4)
    entries = _parse(err.feed(b"abcdefghij\n", T))
    assert [(e.text, e.partial, e.stream) for e in entries] == [
        ("abcd", True, "stderr"),
        ("efgh", True, "stderr"),
        ("ij", False, "stderr"),
    ]
    # a long line without its end yet: the full pieces go now, the rest is held
    assert [(e.text, e.partial) for e in _parse(err.feed(b"klmnop", T))] == [("klmn", True)]
    assert [(e.text, e.partial) for e in _parse(err.feed(b"\n", T))] == [("op", False)]


def test_an_unfinished_line_is_written_partial_or_full_when_the_stream_ends() -> None:
    out = logshim.Splitter(b"stdout")
    assert out.feed(b"prompt> ", T) == []
    assert [(e.text, e.partial) for e in _parse(out.flush(final=False))] == [("prompt> ", True)]
    out.feed(b"last words", T)
    assert [(e.text, e.partial) for e in _parse(out.flush(final=True))] == [("last words", False)]
    assert out.flush(final=True) == []


@pytest.mark.parametrize(
    "line",
    [
        "plain output",
        "2026-12-07T03:00:00Z stdout F no fraction",
        "2026-12-07T03:00:00.000000000Z stdin F not a stream",
        "2026-12-07T03:00:00.000000000Z stdout X bad flag",
        "2026-12-07T03:00:00.00000000xZ stdout F bad digits",
        "",
    ],
)
def test_lines_that_are_not_records_are_kept_as_plain_text(line: str) -> None:
    assert logfiles.parse_record(line) is None
    assert logfiles.entry_of(line) == LogEntry(text=line)  # no time, stdout


def test_a_record_of_an_empty_line_and_one_with_spaces() -> None:
    stamp = "2026-12-07T03:00:00.000000001Z"
    assert logfiles.entry_of(f"{stamp} stdout F") == LogEntry("", "stdout", stamp)
    assert logfiles.entry_of(f"{stamp} stderr F  two  spaces ") == LogEntry(
        " two  spaces ", "stderr", stamp
    )


def _records(path: Path) -> list[LogEntry]:
    return [logfiles.entry_of(line) for line in path.read_text().splitlines()]


def test_the_capture_process_keeps_streams_apart_and_write_times(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    capture = logfiles.spawn_capture(log, max_bytes=1 << 20, keep=2)
    try:
        os.write(capture.stdout, b"early\n")
        time.sleep(1.0)
        os.write(capture.stderr, b"boom\n")
        os.write(capture.stdout, b"late\n")
    finally:
        os.close(capture.stdout)
        os.close(capture.stderr)
    _, status = os.waitpid(capture.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0  # both pipes closed: it ends
    entries = {e.text: e for e in _records(log)}
    assert set(entries) == {"early", "boom", "late"}
    assert entries["boom"].stream == "stderr" and entries["late"].stream == "stdout"
    early, late = (datetime.fromisoformat(entries[k].ts or "") for k in ("early", "late"))
    assert 0.9 <= (late - early).total_seconds() < 5  # stamped when written, not when read
    assert abs(time.time() - late.timestamp()) < 5


def test_the_capture_renames_at_its_cap_and_loses_no_line(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    capture = logfiles.spawn_capture(log, max_bytes=4000, keep=5)
    try:
        for i in range(300):
            os.write(capture.stdout, b"line %d\n" % i)
            if i % 50 == 0:
                time.sleep(0.05)
    finally:
        os.close(capture.stdout)
        os.close(capture.stderr)
    os.waitpid(capture.pid, 0)
    files = [tmp_path / f"console.log.{i}" for i in range(5, 0, -1)] + [log]
    assert sum(f.exists() for f in files) >= 3  # it rotated
    assert all(f.stat().st_size <= 4000 + 64 * 1024 for f in files if f.exists())
    texts = [e.text for f in files if f.exists() for e in _records(f)]
    assert texts == [f"line {i}" for i in range(300)]
    assert [line.split()[-1] for line in logfiles.tail(log, 5, keep=5)] == [
        "295",
        "296",
        "297",
        "298",
        "299",
    ]


async def test_follow_reads_a_renamed_file_to_its_end_then_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("a\n")
    done = asyncio.Event()
    got: list[str] = []

    async def read() -> None:
        async for line in logfiles.follow(log, alive=lambda: not done.is_set(), poll=0.02):
            got.append(line)

    reader = asyncio.create_task(read())
    await asyncio.sleep(0.1)
    with open(log, "a") as old:
        old.write("b\n")
        log.rename(tmp_path / "console.log.1")  # rotated while the reader sleeps
        old.write("c\n")  # written just before the rename was seen
    log.write_text("d\ne\n")
    async with asyncio.timeout(10):
        while got != ["b", "c", "d", "e"]:
            await asyncio.sleep(0.02)
    done.set()
    await asyncio.wait_for(reader, 10)
    assert got == ["b", "c", "d", "e"]


def test_a_capture_that_cannot_write_still_reads_its_pipes(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    capture = logfiles.spawn_capture(directory / "console.log", max_bytes=1 << 20, keep=2)
    try:
        os.write(capture.stdout, b"kept\n")
        time.sleep(0.3)
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()  # the file cannot be opened again: records are dropped
        for _ in range(200):  # 2 MiB: far more than the pipe holds; never blocks or fails
            os.write(capture.stdout, b"y" * 10_000 + b"\n")
    finally:
        os.close(capture.stdout)
        os.close(capture.stderr)
    _, status = os.waitpid(capture.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
