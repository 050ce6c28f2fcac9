"""The operator's reconcile loop and its reconcilers (pure plan + apply).

One loop (``loop.py``) wakes on change topics and on a timer, takes the leader lock and runs
each reconciler's pass: nodes (silent nodes go down, revived ones ready), reschedule (lost
instances replaced), releases (rollouts, replica counts, node drains). Each decision is a
pure function of a view (``rollout_plan.py``); the loop applies the actions with
compare-and-set writes.
"""
