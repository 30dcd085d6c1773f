"""Lifecycle steps (policy/steps.py): pure decisions from what the loop observed, no cluster."""

from __future__ import annotations

import pytest

from raycluster.policy.recovery import RankResult, RankStatus as S
from raycluster.policy.steps import Action, JobView, Limits, decide_placing, decide_running, start_step
from raycluster.store.lifecycle import Cause, JobState, is_legal

NOW = 1000.0


def job(state, **kw):
    return JobView(id="job-1", state=state, **kw)


@pytest.mark.parametrize("state, cause", [(JobState.PENDING, Cause.ADMITTED), (JobState.RECOVERING, Cause.RESUMED)])
def test_start_is_a_new_attempt(state, cause):
    st = start_step(job(state, attempt=2), NOW)
    assert (st.action, st.src, st.dst, st.cause, st.fields["attempt"]) == (Action.START, state, JobState.PLACING,
                                                                          cause, 3)


@pytest.mark.parametrize("ready, placing_for_s, timeouts, action, cause", [
    (True, 0.0, 0, Action.MARK_RUNNING, Cause.PLACED),
    (True, 500.0, 2, Action.MARK_RUNNING, Cause.PLACED),  # ready wins over a late timeout
    (False, 10.0, 0, None, None),  # still within the timeout: nothing to do
    (False, 121.0, 0, Action.REQUEUE, Cause.PLACEMENT_TIMEOUT),
    (False, 121.0, 1, Action.REQUEUE, Cause.PLACEMENT_TIMEOUT),
    (False, 121.0, 2, Action.FAIL, Cause.NO_RESOURCES),  # the third timeout of max 3 is terminal
])
def test_placing(ready, placing_for_s, timeouts, action, cause):
    st = decide_placing(job(JobState.PLACING, placement_timeouts=timeouts, started_at=5.0), ready=ready,
                        placing_for_s=placing_for_s, timeout_s=120.0, max_timeouts=3, now=NOW)
    if action is None:
        assert st is None
        return
    assert (st.action, st.cause) == (action, cause) and is_legal(st.src, st.dst)
    if action == Action.MARK_RUNNING:
        assert st.fields == {"attempt_started_at": NOW, "started_at": 5.0}  # first start kept
    else:
        assert st.fields["placement_timeouts"] == timeouts + 1


def ranks(*specs):
    return [RankResult(i, *spec) for i, spec in enumerate(specs)]


@pytest.mark.parametrize("results, settled, limits, prior, action, cause, counts", [
    (None, True, Limits(), {}, Action.RECOVER, Cause.COORDINATOR_RESTART, (0, 0)),  # no budget spent
    (ranks((S.RUNNING,), (S.RUNNING,)), False, Limits(), {}, None, None, None),
    (ranks((S.OK, None, None, {"loss": 1}), (S.OK,)), False, Limits(), {}, Action.SUCCEED, Cause.FINISHED, None),
    # a node lost is judged at once (the other ranks cannot make it a user error)
    (ranks((S.SYSTEM_ERROR, "NodeDiedError", Cause.NODE_LOST), (S.RUNNING,)), False, Limits(max_restarts=2), {},
     Action.RECOVER, Cause.NODE_LOST, (1, 0)),
    (ranks((S.SYSTEM_ERROR, "NodeDiedError", Cause.NODE_LOST), (S.RUNNING,)), True, Limits(max_restarts=2), {},
     Action.RECOVER, Cause.NODE_LOST, (1, 0)),
    (ranks((S.SYSTEM_ERROR, "OutOfMemoryError", Cause.OOM),), False, Limits(max_restarts=1),
     {"system_restarts": 1}, Action.FAIL, Cause.OOM, None),
    (ranks((S.USER_ERROR, "ValueError: x"), (S.RUNNING,)), False, Limits(), {}, None, None, None),  # settle first
    (ranks((S.USER_ERROR, "ValueError: x"), (S.RUNNING,)), True, Limits(), {}, Action.FAIL, Cause.USER_ERROR, None),
    (ranks((S.USER_ERROR, "ValueError: x"),), True, Limits(max_user_retries=1), {}, Action.RECOVER, Cause.USER_ERROR,
     (0, 1)),
    (ranks((S.SYSTEM_ERROR, "WorkerCrashedError", Cause.WORKER_CRASHED),), False, Limits(), {}, Action.RECOVER,
     Cause.WORKER_CRASHED, (1, 0)),
])
def test_running(results, settled, limits, prior, action, cause, counts):
    st = decide_running(job(JobState.RUNNING, attempt_started_at=NOW - 1, **prior), limits, results,
                        settled=settled, now=NOW)
    if action is None:
        assert st is None
        return
    assert (st.action, st.cause) == (action, cause) and is_legal(st.src, st.dst)
    if counts is not None and cause != Cause.COORDINATOR_RESTART:
        assert (st.fields["system_restarts"], st.fields["user_retries"]) == counts
    if action == Action.SUCCEED:
        assert st.fields["result"] == {"loss": 1}
    if action == Action.FAIL:
        assert st.fields["finished_at"] == NOW and st.fields["error"]


def test_max_runtime_fails_a_running_attempt():
    running = ranks((S.RUNNING,))
    limits = Limits(max_runtime_s=10.0)
    assert decide_running(job(JobState.RUNNING, attempt_started_at=NOW - 5), limits, running, settled=False,
                          now=NOW) is None
    st = decide_running(job(JobState.RUNNING, attempt_started_at=NOW - 11), limits, running, settled=False, now=NOW)
    assert (st.action, st.cause, st.dst) == (Action.FAIL, Cause.TIMEOUT, JobState.FAILED)
    assert "max_runtime_s=10" in st.fields["error"]


def test_a_step_describes_itself_in_one_line():
    st = start_step(job(JobState.PENDING), NOW)
    assert st.describe() == "job-1 start: PENDING -> PLACING [admitted] admitted"


def test_policy_imports_nothing_from_ray():
    import subprocess
    import sys

    code = ("import sys; import raycluster.policy.admission, raycluster.policy.recovery, raycluster.policy.steps, "
            "raycluster.store.jobs, raycluster.store.checkpoints; "
            "sys.exit(1 if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
