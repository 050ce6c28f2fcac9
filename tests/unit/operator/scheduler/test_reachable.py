"""Heartbeat reconciliation accepts states reachable through the transition table only."""

from __future__ import annotations

import pytest

from zeitwork.core.states import INSTANCE_TRANSITIONS, InstanceState, is_allowed
from zeitwork.operator.db.instances import reachable

S = InstanceState


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("target", list(S))
def test_reachable_includes_every_direct_transition(current: S, target: S) -> None:
    if is_allowed(current, target):
        assert reachable(current, target)


def test_examples() -> None:
    assert reachable(S.PENDING, S.RUNNING)  # via starting
    assert reachable(S.RUNNING, S.PENDING)  # via stopped
    assert not any(reachable(S.TERMINATED, t) for t in S if t is not S.TERMINATED)
    assert all(reachable(s, S.TERMINATED) for s in S)
    assert INSTANCE_TRANSITIONS[S.TERMINATED] == frozenset()
