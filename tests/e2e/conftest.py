"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.dev_platform import Platform, dev_platform
from tests.e2e.lan import Lan
from tests.integration.agent.harness import AgentHost, agent_hosts


@pytest.fixture
async def platform(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Platform]:
    """``zeitwork dev`` as a subprocess (extra arguments by indirect parametrisation)."""
    extra: tuple[str, ...] = getattr(request, "param", ())
    async with dev_platform(tmp_path, extra) as made:
        yield made


@pytest.fixture
def lan() -> Iterator[Lan]:
    """A LAN bridge in the root namespace; ``lan.add_host()`` adds a network-namespace
    "host" on it. Everything is removed afterwards."""
    made = Lan()
    made.up()
    try:
        yield made
    finally:
        made.down()


@pytest.fixture
async def hosts(tmp_path: Path) -> AsyncIterator[Callable[..., AgentHost]]:
    """Factory of node agents (``tmp_path/node<n>``); all cleaned up afterwards."""
    async with agent_hosts(tmp_path, "node") as make:
        yield make
