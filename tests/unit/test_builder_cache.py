"""The layer-cache pruning decision (``zeitwork.builder.cache.plan``) and the reading of
``buildah images --json``: pure, no buildah."""

from __future__ import annotations

import json

import pytest

from zeitwork.builder.cache import Entry, Plan, Policy, _built_images, plan
from zeitwork.builder.settings import BuilderSettings
from zeitwork.settings import SettingsError, parse_settings

NOW = 1_000_000.0
DAY = 86400.0


def entry(project: str, size: int, age_days: float) -> Entry:
    return Entry(project=project, size=size, last_used=NOW - age_days * DAY)


def test_nothing_to_do_under_the_cap_and_the_age() -> None:
    entries = [entry("a", 10, 1), entry("b", 20, 2)]
    assert plan(entries, now=NOW, policy=Policy(100, 7 * DAY), busy=frozenset()) == Plan((), ())


def test_a_cache_unused_past_the_age_is_removed() -> None:
    entries = [entry("a", 10, 1), entry("b", 20, 8)]
    decided = plan(entries, now=NOW, policy=Policy(0, 7 * DAY), busy=frozenset())
    assert decided == Plan(trim=(), remove=(("b", "age"),))


def test_over_the_cap_the_least_recently_used_go_first_until_under() -> None:
    entries = [entry("new", 50, 0.1), entry("old", 40, 3), entry("mid", 30, 1)]
    decided = plan(entries, now=NOW, policy=Policy(60, 0), busy=frozenset())
    assert decided.remove == (("old", "size"), ("mid", "size"))
    assert decided.trim == ("old", "mid")


def test_removals_for_age_count_towards_the_cap() -> None:
    entries = [entry("a", 50, 1), entry("stale", 100, 30)]
    decided = plan(entries, now=NOW, policy=Policy(60, 7 * DAY), busy=frozenset())
    assert decided.remove == (("stale", "age"),)


def test_a_busy_cache_is_never_named_and_still_counts() -> None:
    entries = [entry("busy", 100, 30), entry("a", 50, 2), entry("b", 10, 1)]
    decided = plan(entries, now=NOW, policy=Policy(120, 7 * DAY), busy=frozenset({"busy"}))
    assert decided.remove == (("a", "size"),)  # busy is old and big, but in use
    assert "busy" not in decided.trim


def test_no_cap_and_no_age_keep_everything() -> None:
    entries = [entry("a", 10**12, 10_000)]
    assert plan(entries, now=NOW, policy=Policy(0, 0), busy=frozenset()) == Plan((), ())


def test_built_images_newest_first_unnamed_left_out() -> None:
    listing = json.dumps(
        [
            {"id": "old", "names": ["localhost/app:build-1"], "created": 100},
            {"id": "cache", "names": None, "created": 150},
            {"id": "base", "names": ["localhost/zeitwork/python:bookworm"], "created": 50},
            {"id": "new", "names": ["localhost/app:build-2"], "created": 200},
        ]
    )
    assert _built_images(listing) == ["new", "old"]
    assert _built_images("not json") == []
    assert _built_images("") == []
    assert _built_images('{"not": "a list"}') == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BUILDER_NETWORK", "private"),
        ("BUILDER_CACHE_MAX_SIZE", "lots"),
        ("BUILDER_CACHE_MAX_AGE", "-1"),
    ],
)
def test_bad_builder_settings_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        parse_settings(BuilderSettings, **{name: value})


def test_builder_defaults() -> None:
    settings = parse_settings(BuilderSettings)
    assert settings.network == "host"
    assert settings.cache_max_size == "20G"
    assert settings.cache_max_age == 7 * DAY
