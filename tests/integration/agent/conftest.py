from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.integration.agent.harness import AgentHost


@pytest.fixture
async def agent_host(tmp_path: Path) -> AsyncIterator[Callable[..., AgentHost]]:
    """Factory of agent worlds; everything they made is removed afterwards."""
    made: list[AgentHost] = []

    def make(**kwargs: object) -> AgentHost:
        host = AgentHost(root=tmp_path / f"host{len(made)}", **kwargs)  # type: ignore[arg-type]
        made.append(host)
        return host

    try:
        yield make
    finally:
        for host in made:
            await host.cleanup()
