"""The console capture of one container, run as its own small process beside it.

``python3 -I logshim.py LOG_PATH MAX_BYTES KEEP`` with the container's stdout pipe on fd 3
and its stderr pipe on fd 4. Every line is written to ``LOG_PATH`` as one record, stamped
with the time it was read from the pipe (the time the app wrote it, to within a
scheduling delay)::

    2026-12-07T09:30:01.123456789Z stdout F the line as written
    2026-12-07T09:30:01.123502113Z stderr P the first 16 KiB of a longer line

(the shape of the CRI log format: time in UTC with nanoseconds, the stream, ``F`` for a
full line or ``P`` for a partial one, the text without its line break). A line longer than
``LINE_MAX`` bytes is split into ``P`` records ending with an ``F`` one; an unfinished line
(no line break yet) is held at most ``FLUSH_SECONDS`` and then written as ``P``. When the
file would pass ``MAX_BYTES`` it is renamed to ``LOG_PATH.1`` (older ones shifted, ``KEEP``
kept) and a new one is started: nothing is copied and no line is lost in a rotation.

The process runs in its own session (an agent that restarts or is killed leaves it
running; the container keeps writing) and ends when both pipes are closed, that is when
every process of the container has ended. A record it cannot write (a full disk) is
dropped, never held: the pipes are read whatever happens, so the app is not blocked on its
output nor killed by SIGPIPE. Only the standard library is imported (the
interpreter starts with ``-I``): it costs a few MiB per container.
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
import time
from collections.abc import Callable

LINE_MAX = 16 * 1024
FLUSH_SECONDS = 0.5
READ_BYTES = 64 * 1024
STDOUT_FD = 3
STDERR_FD = 4


def stamp(ns: int) -> bytes:
    """RFC 3339 in UTC with nanoseconds, fixed width (sorts as text)."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z").encode()


class Splitter:
    """One stream's bytes into records (pure: the caller passes the time)."""

    def __init__(self, name: bytes, *, line_max: int = LINE_MAX) -> None:
        self.name = name
        self.line_max = line_max
        self.pending = bytearray()
        self.pending_since = 0  # when the held line's first byte was read (ns)

    def _record(self, ns: int, flag: bytes, text: bytes | bytearray) -> bytes:
        return b"%s %s %s %s\n" % (stamp(ns), self.name, flag, bytes(text))

    def feed(self, data: bytes, now: int) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            since = self.pending_since if self.pending else now
            self.pending += data[start:end]
            out.extend(self._whole(since))
            start = end + 1
        if start < len(data):
            if not self.pending:
                self.pending_since = now
            self.pending += data[start:]
            while len(self.pending) >= self.line_max:  # a very long line: its pieces now
                out.append(self._record(self.pending_since, b"P", self.pending[: self.line_max]))
                del self.pending[: self.line_max]
                self.pending_since = now
        return out

    def _whole(self, since: int) -> list[bytes]:
        out: list[bytes] = []
        line = self.pending
        while len(line) > self.line_max:
            out.append(self._record(since, b"P", line[: self.line_max]))
            del line[: self.line_max]
        out.append(self._record(since, b"F", line))
        self.pending = bytearray()
        return out

    def due(self) -> int | None:
        """When the held unfinished line must be written (ns), None when none is held."""
        return self.pending_since + int(FLUSH_SECONDS * 1e9) if self.pending else None

    def flush(self, *, final: bool) -> list[bytes]:
        """The held unfinished line: ``P`` (more may follow), or ``F`` when the stream ended."""
        if not self.pending:
            return []
        record = self._record(self.pending_since, b"F" if final else b"P", self.pending)
        self.pending = bytearray()
        return [record]


class RotatingFile:
    """Appends records; renames the file away before it would pass ``max_bytes``."""

    def __init__(self, path: str, *, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.fd = self._open()
        self.size = os.fstat(self.fd).st_size

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)

    def write(self, data: bytes) -> None:
        if self.size and self.size + len(data) > self.max_bytes:
            self.rotate()
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.size += len(data)

    def rotate(self) -> None:
        # rotation renames finished files down the line; nothing is written in place by these
        # renames, so core/files.py does not apply
        for index in range(self.keep - 1, 0, -1):
            older = f"{self.path}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{self.path}.{index + 1}")
        if self.keep > 0:
            os.replace(self.path, f"{self.path}.1")
        else:
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = self._open()
        self.size = 0


def run(out: RotatingFile | SafeFile, fds: dict[int, Splitter]) -> None:
    selector = selectors.DefaultSelector()
    for fd in fds:
        selector.register(fd, selectors.EVENT_READ)
    while fds:
        dues = [d for d in (s.due() for s in fds.values()) if d is not None]
        timeout = None if not dues else max(0.0, (min(dues) - time.time_ns()) / 1e9)
        ready = selector.select(timeout)
        now = time.time_ns()
        records: list[bytes] = []
        for key, _ in ready:
            fd = int(key.fd)
            data = os.read(fd, READ_BYTES)
            if data:
                records.extend(fds[fd].feed(data, now))
            else:  # every writer closed this stream
                records.extend(fds.pop(fd).flush(final=True))
                selector.unregister(fd)
                os.close(fd)
        for splitter in fds.values():
            due = splitter.due()
            if due is not None and due <= now:
                records.extend(splitter.flush(final=False))
        if records:
            out.write(b"".join(records))
    selector.close()


class SafeFile:
    """A ``RotatingFile`` whose write errors (a full disk, the directory removed) drop the
    records instead of ending the capture: the pipes are always read, so the container is
    never blocked on them nor killed by SIGPIPE."""

    def __init__(self, opener: Callable[[], RotatingFile]) -> None:
        self._opener = opener
        self._file: RotatingFile | None = None
        self.dropped = 0

    def write(self, data: bytes) -> None:
        try:
            if self._file is None:
                self._file = self._opener()
            self._file.write(data)
        except OSError:
            self.dropped += data.count(b"\n")
            self._file = None  # opened again (and its size read again) next time


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        sys.stderr.write("usage: logshim.py LOG_PATH MAX_BYTES KEEP (pipes on fds 3 and 4)\n")
        return 2
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    path, max_bytes, keep = argv[1], int(argv[2]), int(argv[3])
    out = SafeFile(lambda: RotatingFile(path, max_bytes=max_bytes, keep=keep))
    run(out, {STDOUT_FD: Splitter(b"stdout"), STDERR_FD: Splitter(b"stderr")})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
