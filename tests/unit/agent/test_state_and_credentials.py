from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pytest

from zeitwork.agent.reporter import Credential, CredentialFile, next_delay
from zeitwork.agent.state_store import StateStore, atomic_write
from zeitwork.core.errors import InvalidInput


def test_state_store_round_trip_and_corrupt_files_are_set_aside(tmp_path: Path) -> None:
    store = StateStore(root=tmp_path / "instances")
    a, b = uuid.uuid4(), uuid.uuid4()
    store.save(a, {"state": "running", "n": 1})
    store.save(b, {"state": "stopped"})
    store.save(a, {"state": "running", "n": 2})
    (tmp_path / "instances" / f"{uuid.uuid4()}.json").write_text("{half")
    loaded = store.load_all()
    assert loaded == {a: {"state": "running", "n": 2}, b: {"state": "stopped"}}
    assert len(list((tmp_path / "instances").glob("*.corrupt"))) == 1
    assert stat.S_IMODE((tmp_path / "instances" / f"{a}.json").stat().st_mode) == 0o600
    store.delete(b)
    store.delete(b)
    assert set(store.load_all()) == {a}


def test_atomic_write_keeps_the_old_file_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "x.json"
    atomic_write(path, b"old")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("zeitwork.agent.state_store.os.fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_credential_file_is_private(tmp_path: Path) -> None:
    creds = CredentialFile(tmp_path / "node.json")
    assert creds.load() is None
    node_id = uuid.uuid4()
    creds.save(Credential(node_id, "secret"))
    assert creds.load() == Credential(node_id, "secret")
    assert stat.S_IMODE((tmp_path / "node.json").stat().st_mode) == 0o600
    (tmp_path / "node.json").write_text("garbage")
    with pytest.raises(InvalidInput):
        creds.load()


def test_operator_retry_back_off() -> None:
    delays = [0.0]
    for _ in range(8):
        delays.append(next_delay(delays[-1]))
    assert delays[1:] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
