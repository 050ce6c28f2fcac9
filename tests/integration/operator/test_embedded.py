"""The embedded PostgreSQL never listens where other local users can reach it."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from zeitwork.core.errors import ServiceUnavailable
from zeitwork.operator.db.embedded import EmbeddedPostgres


@pytest.mark.requires_root
def test_a_data_dir_too_long_for_the_socket_is_refused_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As root the library would put the socket of a trust-authenticated superuser into a
    # world-writable directory under XDG_RUNTIME_DIR (opening its parents): any local user
    # could connect. Refuse instead.
    runtime = Path(tempfile.mkdtemp(prefix="zw-xdg-"))  # short, like /run/user/0
    runtime.chmod(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    data = tmp_path / ("d" * max(1, 100 - len(str(tmp_path))))
    server: EmbeddedPostgres | None = None
    try:
        with pytest.raises(ServiceUnavailable, match="too long"):
            server = EmbeddedPostgres.start(data)
        assert (runtime.stat().st_mode & 0o777) == 0o700
        assert not (data / "postgres").exists()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(runtime, ignore_errors=True)
