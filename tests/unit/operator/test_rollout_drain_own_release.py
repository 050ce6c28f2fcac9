"""An instance drains for its own release's drain timeout, also once a newer release is
current: the old instance's time must not switch to the new release's mid-drain (it used to,
so a release with a 7 s drain had its old instances stopped at the new release's 2 s, cutting
their WebSockets before the balancer's 1001)."""

from __future__ import annotations

import dataclasses

from tests.unit.operator.test_rollout_plan import NOW, V2, iid, inst, view
from zeitwork.operator.reconcile import rollout_plan as rp

SHORT_V2 = dataclasses.replace(V2, strategy=dataclasses.replace(V2.strategy, drain_timeout=2.0))


def test_an_old_instance_keeps_its_release_drain_timeout_after_promotion() -> None:
    # v2 (drain 2 s) is current; the v1 instance started draining 3 s ago with v1's 7 s
    old = inst(3, serving=False, drain_started_at=NOW - 3, drain_timeout=7.0)
    current = (inst(1, SHORT_V2), inst(2, SHORT_V2))
    assert rp.plan(view(*current, old, current=SHORT_V2)) == [rp.Wait("draining", until=NOW + 4)]
    done = dataclasses.replace(old, drain_started_at=NOW - 7)
    assert rp.plan(view(*current, done, current=SHORT_V2)) == [rp.Terminate(iid(3), "drained")]


def test_without_its_own_timeout_the_view_strategy_is_used_as_before() -> None:
    old = inst(3, serving=False, drain_started_at=NOW - 3)
    current = (inst(1, SHORT_V2), inst(2, SHORT_V2))
    assert rp.plan(view(*current, old, current=SHORT_V2)) == [rp.Terminate(iid(3), "drained")]
