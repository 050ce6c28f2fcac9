"""The agent's own token: made once, mode 0600, the same on every start, a damaged file is
a clear error."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from zeitwork.agent import agent_token
from zeitwork.core.errors import InvalidInput
from zeitwork.wire.agent import NodeRegistration
from zeitwork.wire.common import ResourcesModel


def test_made_once_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "agent_token"
    first = agent_token.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert agent_token.load_or_create(path) == first
    assert agent_token.load_or_create(tmp_path / "other") != first
    # what the operator's wire model accepts
    NodeRegistration(
        hostname="h",
        ip_address="10.0.0.5",
        resources=ResourcesModel(vcpu=1, memory=512),
        agent_token=first,
    )


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "agent_token"
    token = agent_token.load_or_create(path)
    path.chmod(0o644)
    assert agent_token.load_or_create(path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("content", ["", "short", "has spaces in it but is long enough......"])
def test_a_damaged_file_is_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "agent_token"
    path.write_text(content)
    with pytest.raises(InvalidInput, match="remove it"):
        agent_token.load_or_create(path)
