from __future__ import annotations

import itertools

import pytest

from zeitwork.core import (
    DeploymentState,
    ImageState,
    InstanceState,
    InvalidTransition,
    NodeState,
    check_transition,
    is_allowed,
)
from zeitwork.core.states import (
    DEPLOYMENT_TRANSITIONS,
    IMAGE_TRANSITIONS,
    INSTANCE_TRANSITIONS,
    NODE_TRANSITIONS,
    node_state_after_outage,
)

TABLES = [
    (NodeState, NODE_TRANSITIONS),
    (InstanceState, INSTANCE_TRANSITIONS),
    (ImageState, IMAGE_TRANSITIONS),
    (DeploymentState, DEPLOYMENT_TRANSITIONS),
]


@pytest.mark.parametrize(("enum", "table"), TABLES)
def test_every_state_has_a_row(enum, table) -> None:
    assert set(table) == set(enum)


@pytest.mark.parametrize(("enum", "table"), TABLES)
def test_every_pair_follows_the_table(enum, table) -> None:
    for current, target in itertools.product(enum, enum):
        legal = current == target or target in table[current]
        assert is_allowed(current, target) is legal
        if legal:
            assert check_transition(current, target) is target
        else:
            with pytest.raises(InvalidTransition) as info:
                check_transition(current, target)
            assert info.value.extra["from"] == current.value
            assert info.value.extra["to"] == target.value


def test_terminal_states_are_final() -> None:
    assert NODE_TRANSITIONS[NodeState.TERMINATED] == frozenset()
    assert INSTANCE_TRANSITIONS[InstanceState.TERMINATED] == frozenset()
    assert not is_allowed(InstanceState.TERMINATED, InstanceState.RUNNING)


def test_instance_lifecycle_path_is_legal() -> None:
    path = ["pending", "starting", "running", "stopping", "stopped", "terminated"]
    for a, b in itertools.pairwise(path):
        assert is_allowed(InstanceState(a), InstanceState(b))


def test_a_node_returns_from_an_outage_to_draining_or_ready() -> None:
    assert node_state_after_outage(NodeState.DRAINING) is NodeState.DRAINING
    assert node_state_after_outage(NodeState.READY) is NodeState.READY
    assert node_state_after_outage(None) is NodeState.READY
    assert is_allowed(NodeState.DOWN, NodeState.DRAINING)
