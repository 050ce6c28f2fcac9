"""Pagination cut-off, settings defaults, and psycopg error translation."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from psycopg import errors as pg
from psycopg_pool import PoolTimeout

from zeitwork.core.errors import Conflict, InvalidInput, ServiceUnavailable
from zeitwork.operator.db.errors import translate, translating
from zeitwork.operator.db.pages import PageRequest, page_of
from zeitwork.operator.settings import OperatorSettings
from zeitwork.settings import SettingsError, parse_settings


@dataclass(frozen=True)
class Item:
    id: uuid.UUID


@pytest.mark.parametrize(("rows", "limit"), [(0, 3), (2, 3), (3, 3), (4, 3), (1, 1), (2, 1)])
def test_page_of(rows: int, limit: int) -> None:
    items = sorted((Item(uuid.uuid4()) for _ in range(rows)), key=lambda i: i.id)
    page = page_of(items, PageRequest(limit=limit))
    assert page.items == items[:limit]
    if rows > limit:
        assert page.next_after == items[limit - 1].id
    else:
        assert page.next_after is None


def test_page_params_fetch_one_more() -> None:
    after = uuid.uuid4()
    assert PageRequest(limit=10, after=after).params() == {"after": after, "fetch": 11}


@pytest.mark.parametrize(
    ("environment", "auto", "expected"),
    [
        ("development", None, True),
        ("staging", None, False),
        ("production", None, False),
        ("production", "1", True),
        ("development", "0", False),
    ],
)
def test_auto_migrate_default(
    monkeypatch: pytest.MonkeyPatch, environment: str, auto: str | None, expected: bool
) -> None:
    monkeypatch.setenv("ENVIRONMENT", environment)
    if auto is None:
        monkeypatch.delenv("ZEITWORK_AUTO_MIGRATE", raising=False)
    else:
        monkeypatch.setenv("ZEITWORK_AUTO_MIGRATE", auto)
    assert parse_settings(OperatorSettings).migrate_on_start is expected


def test_operator_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PORT", "DATABASE_URL", "ZEITWORK_IMAGE_MAX_BYTES", "ZEITWORK_WORKERS"):
        monkeypatch.delenv(var, raising=False)
    s = parse_settings(OperatorSettings)
    assert (s.port, s.database_url, s.json_max_bytes, s.image_max_bytes, s.workers) == (
        8080,
        None,
        1024 * 1024,
        2 * 1024**3,
        1,
    )
    assert s.node_heartbeat_timeout == 30


@pytest.mark.parametrize(
    ("var", "value"),
    [("ZEITWORK_WORKERS", "0"), ("ZEITWORK_NODE_HEARTBEAT_TIMEOUT", "-1"), ("PORT", "x")],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        parse_settings(OperatorSettings)
    assert var in str(info.value)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (PoolTimeout("no connection"), ServiceUnavailable),
        (pg.UniqueViolation("dup"), Conflict),
        (pg.CheckViolation("bad"), InvalidInput),
        (pg.SerializationFailure("race"), Conflict),
        (pg.QueryCanceled("slow"), ServiceUnavailable),
        (pg.AdminShutdown("bye"), ServiceUnavailable),
    ],
)
def test_translate(exc: Exception, expected: type[Exception]) -> None:
    translated = translate(exc)  # type: ignore[arg-type]
    assert type(translated) is expected
    with pytest.raises(expected) as info, translating():
        raise exc
    assert info.value.__cause__ is exc


def test_unavailable_has_retry_after() -> None:
    translated = translate(PoolTimeout("x"))
    assert isinstance(translated, ServiceUnavailable)
    assert translated.retry_after > 0
