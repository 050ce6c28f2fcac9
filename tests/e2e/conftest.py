"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.dev_platform import Platform, dev_platform


@pytest.fixture
async def platform(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Platform]:
    """``zeitwork dev`` as a subprocess (extra arguments by indirect parametrisation)."""
    extra: tuple[str, ...] = getattr(request, "param", ())
    async with dev_platform(tmp_path, extra) as made:
        yield made
