from __future__ import annotations

import asyncio
import stat
import threading
import time
import uuid
from pathlib import Path

import pytest

from zeitwork.agent import state_store
from zeitwork.agent.operator_link import Credential, CredentialFile, next_delay
from zeitwork.agent.state_store import StateStore
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


async def test_queued_saves_write_in_a_thread_in_order_without_blocking_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[int, bytes]] = []
    real = state_store.atomic_write

    def slow_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
        time.sleep(0.1)  # a slow disk: the event loop must keep running meanwhile
        writes.append((threading.get_ident(), data))
        real(path, data, mode=mode)

    monkeypatch.setattr(state_store, "atomic_write", slow_write)
    store = StateStore(root=tmp_path / "instances")
    a, b = uuid.uuid4(), uuid.uuid4()
    record = {"state": "starting", "n": 1}
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    store.queue_save(a, record)
    record["n"] = 99  # encoded when queued: a later change does not leak in
    assert time.monotonic() - started < 0.05  # queueing does not wait for the disk
    await asyncio.sleep(0)  # the first write starts
    for n in (2, 3):
        store.queue_save(a, {"state": "running", "n": n})
    store.queue_save(b, {"state": "running"})
    await store.flush()
    task.cancel()
    assert ticks >= 5  # the loop ran while the writes were under way
    assert all(ident != threading.get_ident() for ident, _ in writes)
    # the first write, then the newest (a queued save superseded by a newer one is skipped)
    assert [d for d in (data for _, data in writes) if b"starting" in d] == [
        state_store.encode_json({"state": "starting", "n": 1})
    ]
    assert store.load_all() == {a: {"state": "running", "n": 3}, b: {"state": "running"}}
    # a delete is never overtaken by an earlier save, nor a save by an earlier delete
    store.queue_save(a, {"state": "stopped"})
    store.queue_delete(a)
    store.queue_save(b, {"state": "stopped"})
    await asyncio.sleep(0)
    store.queue_delete(b)
    store.queue_save(b, {"state": "pending"})
    await store.flush()
    assert store.load_all() == {b: {"state": "pending"}}
    stored = tmp_path / "instances" / f"{b}.json"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert list((tmp_path / "instances").glob(".*.tmp")) == []


async def test_a_failed_queued_write_is_logged_and_later_ones_proceed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = state_store.atomic_write
    calls = 0

    def failing_once(path: Path, data: bytes, *, mode: int = 0o644) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(28, "No space left on device")
        real(path, data, mode=mode)

    monkeypatch.setattr(state_store, "atomic_write", failing_once)
    store = StateStore(root=tmp_path / "instances")
    a = uuid.uuid4()
    store.queue_save(a, {"n": 1})
    await store.flush()
    assert store.load_all() == {}
    store.queue_save(a, {"n": 2})
    await store.flush()
    assert store.load_all() == {a: {"n": 2}}


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
