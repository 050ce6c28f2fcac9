from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.agent.harness import AgentHost, agent_hosts


@pytest.fixture
async def agent_host(tmp_path: Path) -> AsyncIterator[Callable[..., AgentHost]]:
    """Factory of agent worlds; everything they made is removed afterwards."""
    async with agent_hosts(tmp_path, "host") as make:
        yield make


@pytest.fixture(autouse=True)
def _subreaper_only_during_the_test() -> Iterator[None]:
    from tests.contract.runtime.harness import stop_being_subreaper

    yield
    stop_being_subreaper()
