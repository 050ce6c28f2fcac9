"""The reconcile decisions, exhaustively: every (wanted state, seen state, alive, busy,
handle) combination gets a decision that respects the instance state machine."""

from __future__ import annotations

import itertools
import uuid

import pytest

from zeitwork.agent import plan as p
from zeitwork.core.states import InstanceState, is_allowed

S = InstanceState
ID = uuid.UUID(int=1)
T = p.Tuning(max_restarts=3, backoff_base=1.0, backoff_cap=8.0, stable_after=60.0)


def decide(want: p.Want | None, seen: p.Seen | None, now: float = 100.0) -> p.Action | None:
    return p.decide(ID, want, seen, now=now, tuning=T)


@pytest.mark.parametrize(
    ("attempt", "delay"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (500, 8.0)]
)
def test_backoff_doubles_up_to_the_cap(attempt: int, delay: float) -> None:
    assert p.backoff(attempt, base=1.0, cap=8.0) == delay


def test_new_instance_wanted_running_starts_and_stopped_settles() -> None:
    assert decide(p.Want("running"), None) == p.Start(ID)
    assert decide(p.Want("stopped"), None) == p.Settle(ID, S.STOPPED, None)
    assert decide(p.Want("terminated"), None) is None
    assert decide(None, None) is None


def test_busy_instances_are_left_alone_whatever_is_wanted() -> None:
    for want in (None, p.Want("running"), p.Want("stopped"), p.Want("terminated")):
        for state in S:
            assert decide(want, p.Seen(state=state, busy=True)) is None


def test_unwanted_or_terminated_instances_are_removed() -> None:
    for state in S:
        assert decide(None, p.Seen(state=state)) == p.Remove(ID)
        assert decide(p.Want("terminated"), p.Seen(state=state)) == p.Remove(ID)


def test_running_and_alive_needs_nothing() -> None:
    seen = p.Seen(state=S.RUNNING, alive=True, has_handle=True, started_at=90.0)
    assert decide(p.Want("running"), seen) is None


def test_a_long_stable_run_resets_the_restart_count() -> None:
    seen = p.Seen(state=S.RUNNING, alive=True, has_handle=True, restarts=2, started_at=10.0)
    assert decide(p.Want("running"), seen, now=100.0) == p.MarkStable(ID)
    young = p.Seen(state=S.RUNNING, alive=True, has_handle=True, restarts=2, started_at=90.0)
    assert decide(p.Want("running"), young, now=100.0) is None


@pytest.mark.parametrize(
    ("policy", "code", "oom", "expected"),
    [
        ("always", 0, False, p.ScheduleRestart(ID, delay=1.0, attempt=1)),
        ("always", 1, False, p.ScheduleRestart(ID, delay=1.0, attempt=1)),
        ("always", None, False, p.ScheduleRestart(ID, delay=1.0, attempt=1)),
        ("on-failure", 0, False, p.Settle(ID, S.STOPPED, "exited with code 0")),
        ("on-failure", 2, False, p.ScheduleRestart(ID, delay=1.0, attempt=1)),
        ("on-failure", 0, True, p.ScheduleRestart(ID, delay=1.0, attempt=1)),
        ("never", 0, False, p.Settle(ID, S.STOPPED, "exited with code 0")),
        ("never", 3, False, p.Settle(ID, S.FAILED, "exited with code 3")),
        ("never", 137, True, p.Settle(ID, S.FAILED, "killed: out of memory (OOM)")),
    ],
)
def test_exit_follows_the_restart_policy(
    policy: p.RestartPolicy, code: int | None, oom: bool, expected: p.Action
) -> None:
    seen = p.Seen(state=S.RUNNING, alive=False, has_handle=True, exit_code=code, oom_killed=oom)
    assert decide(p.Want("running", policy), seen) == expected


def test_back_off_grows_with_consecutive_failures_and_a_crash_loop_fails() -> None:
    delays = []
    for restarts in range(3):
        seen = p.Seen(state=S.RUNNING, alive=False, has_handle=True, exit_code=1, restarts=restarts)
        action = decide(p.Want("running"), seen)
        assert isinstance(action, p.ScheduleRestart)
        assert action.attempt == restarts + 1
        delays.append(action.delay)
    assert delays == [1.0, 2.0, 4.0]
    looping = p.Seen(state=S.RUNNING, alive=False, has_handle=True, exit_code=1, restarts=3)
    action = decide(p.Want("running"), looping)
    assert isinstance(action, p.Settle)
    assert action.state is S.FAILED
    assert action.reason is not None and "crash loop" in action.reason
    assert "exited with code 1" in action.reason


def test_clean_exits_under_always_do_not_count_towards_a_crash_loop() -> None:
    seen = p.Seen(state=S.RUNNING, alive=False, has_handle=True, exit_code=0, restarts=3)
    assert isinstance(decide(p.Want("running"), seen), p.ScheduleRestart)


def test_scheduled_restart_waits_for_its_time() -> None:
    waiting = p.Seen(state=S.STARTING, restart_at=105.0)
    assert decide(p.Want("running"), waiting, now=100.0) is None
    assert decide(p.Want("running"), waiting, now=105.0) == p.Start(ID)
    # asked to stop while waiting: settles without starting
    assert decide(p.Want("stopped"), waiting) == p.Settle(ID, S.STOPPED, "stopped as requested")


def test_wanted_stopped() -> None:
    alive = p.Seen(state=S.RUNNING, alive=True, has_handle=True)
    assert decide(p.Want("stopped"), alive) == p.Stop(ID)
    exited = p.Seen(state=S.RUNNING, alive=False, has_handle=True, exit_code=0)
    assert decide(p.Want("stopped"), exited) == p.Settle(ID, S.STOPPED, "stopped as requested")
    for state in (S.STOPPED, S.FAILED):
        assert decide(p.Want("stopped"), p.Seen(state=state)) is None
        # a leftover workload is removed, the state stays
        leftover = p.Seen(state=state, has_handle=True, alive=True)
        assert decide(p.Want("stopped"), leftover) == p.Settle(ID, state, None)
    assert decide(p.Want("stopped"), p.Seen(state=S.STOPPING)) == p.Stop(ID)


def test_interrupted_work_is_finished() -> None:
    # the agent died mid-stop: finish the stop (then it may start again)
    assert decide(p.Want("running"), p.Seen(state=S.STOPPING)) == p.Stop(ID)
    # died mid-start without a handle: start again
    assert decide(p.Want("running"), p.Seen(state=S.STARTING)) == p.Start(ID)
    # stopped and wanted running again
    assert decide(p.Want("running"), p.Seen(state=S.STOPPED)) == p.Start(ID)
    # ...unless it completed by itself under its policy (on-failure exit 0, never)
    assert decide(p.Want("running"), p.Seen(state=S.STOPPED, completed=True)) is None
    # failed stays failed until asked again (leftovers of it are removed)
    assert decide(p.Want("running"), p.Seen(state=S.FAILED)) is None
    assert decide(p.Want("running"), p.Seen(state=S.FAILED, has_handle=True)) == p.Settle(
        ID, S.FAILED, None
    )


# every combination: the decision is legal for the instance state machine
_WANTS = [
    None,
    *(
        p.Want(s, r)
        for s in ("running", "stopped", "terminated")
        for r in ("always", "on-failure", "never")
    ),
]  # type: ignore[arg-type]


def test_every_combination_gives_a_legal_step() -> None:
    combos = itertools.product(_WANTS, list(S), [False, True], [False, True], [None, 0, 1])
    checked = 0
    for want, state, alive, handle, code in combos:
        seen = p.Seen(state=state, alive=alive, has_handle=handle, exit_code=code, restarts=1)
        action = decide(want, seen)
        where = f"{want} {seen} -> {action}"
        if isinstance(action, p.Settle):
            assert is_allowed(state, action.state), where
        if isinstance(action, p.ScheduleRestart):
            assert is_allowed(state, S.STARTING), where
            assert 0 < action.delay <= T.backoff_cap, where
        if isinstance(action, p.Start):
            assert want is not None and want.state == "running", where
            assert not (handle and alive and state is S.RUNNING), where
        if isinstance(action, p.Stop):
            assert state in (S.RUNNING, S.STARTING, S.STOPPING), where
        if want is None or want.state == "terminated":
            assert action == p.Remove(ID), where
        if want is not None and want.state == "stopped":
            assert not isinstance(action, p.Start | p.ScheduleRestart), where
        if handle and action is None:  # a handle left alone only while it runs as wanted
            assert want is not None and want.state == "running" and alive, where
        checked += 1
    assert checked == len(_WANTS) * len(S) * 2 * 2 * 3


def test_plan_is_ordered_by_id_and_covers_both_sides() -> None:
    a, b, c = (uuid.UUID(int=i) for i in (3, 1, 2))
    actions = p.plan(
        {a: p.Want("running"), b: p.Want("running")},
        {b: p.Seen(state=S.RUNNING, alive=True, has_handle=True), c: p.Seen(state=S.RUNNING)},
        now=0.0,
        tuning=T,
    )
    assert actions == [p.Remove(c), p.Start(a)]


def test_liveness_failure_restarts_a_running_instance_unless_the_policy_is_never() -> None:
    seen = p.Seen(state=S.RUNNING, alive=True, has_handle=True, liveness_failed=True)
    assert decide(p.Want("running"), seen) == p.RestartUnhealthy(ID, restart=True)
    assert decide(p.Want("running", "on-failure"), seen) == p.RestartUnhealthy(ID, restart=True)
    assert decide(p.Want("running", "never"), seen) == p.RestartUnhealthy(ID, restart=False)
    # asked to stop or remove: that wins; an exit is handled as an exit; busy: wait
    assert decide(p.Want("stopped"), seen) == p.Stop(ID)
    assert decide(None, seen) == p.Remove(ID)
    exited = p.Seen(state=S.RUNNING, alive=False, has_handle=True, liveness_failed=True)
    assert isinstance(decide(p.Want("running"), exited), p.ScheduleRestart)
    busy = p.Seen(state=S.RUNNING, alive=True, has_handle=True, liveness_failed=True, busy=True)
    assert decide(p.Want("running"), busy) is None
