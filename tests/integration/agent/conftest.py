from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
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


@pytest.fixture(autouse=True)
def _subreaper_only_during_the_test() -> Iterator[None]:
    from tests.contract.runtime.harness import stop_being_subreaper

    yield
    stop_being_subreaper()
