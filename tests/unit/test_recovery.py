"""Recovery policy: pure, parametrized, no cluster."""

import pytest

from raycluster.policy.recovery import (Action, AttemptOutcome, RankResult, RankStatus as S, classify,
                                 decide_recovery)
from raycluster.store.lifecycle import Cause


def rr(*statuses):
    return [RankResult(i, s, None if s in (S.OK, S.RUNNING) else f"err{i}") for i, s in enumerate(statuses)]


@pytest.mark.parametrize(
    "statuses, settled, outcome",
    [
        ((S.OK, S.OK), False, AttemptOutcome.SUCCEEDED),
        ((S.OK, S.RUNNING), False, AttemptOutcome.RUNNING),
        ((S.RUNNING, S.RUNNING), False, AttemptOutcome.RUNNING),
        # a peer's socket error shows up as a user error first: wait for the others
        ((S.USER_ERROR, S.RUNNING), False, AttemptOutcome.RUNNING),
        ((S.USER_ERROR, S.RUNNING), True, AttemptOutcome.USER_FAILURE),
        # any system failure makes the whole attempt a system failure
        ((S.USER_ERROR, S.SYSTEM_ERROR), False, AttemptOutcome.SYSTEM_FAILURE),
        ((S.SYSTEM_ERROR, S.RUNNING), True, AttemptOutcome.SYSTEM_FAILURE),
        # ... so a system error is judged at once: no rank reporting later can change the verdict
        ((S.SYSTEM_ERROR, S.RUNNING), False, AttemptOutcome.SYSTEM_FAILURE),
        ((S.RUNNING, S.USER_ERROR, S.SYSTEM_ERROR), False, AttemptOutcome.SYSTEM_FAILURE),
        ((S.USER_ERROR, S.USER_ERROR), False, AttemptOutcome.USER_FAILURE),
        ((S.CANCELLED, S.OK), False, AttemptOutcome.SYSTEM_FAILURE),
    ],
)
def test_classify(statuses, settled, outcome):
    assert classify(rr(*statuses), settled)[0] == outcome


def test_classify_keeps_the_system_error_text():
    out, err, cause = classify(rr(S.USER_ERROR, S.SYSTEM_ERROR), settled=False)
    assert out == AttemptOutcome.SYSTEM_FAILURE and "rank 1" in err and "err1" in err
    assert cause == Cause.SYSTEM_ERROR  # a system error without a cause from Ray


@pytest.mark.parametrize("results, settled, cause", [
    ([RankResult(0, S.OK), RankResult(1, S.OK)], False, Cause.FINISHED),
    ([RankResult(0, S.RUNNING)], False, None),
    ([RankResult(0, S.USER_ERROR, "boom"), RankResult(1, S.RUNNING)], True, Cause.USER_ERROR),
    ([RankResult(0, S.USER_ERROR, "socket"), RankResult(1, S.SYSTEM_ERROR, "NodeDiedError", Cause.NODE_LOST)],
     False, Cause.NODE_LOST),
    ([RankResult(0, S.SYSTEM_ERROR, "oom", Cause.OOM), RankResult(1, S.SYSTEM_ERROR, "x", Cause.NODE_LOST)],
     False, Cause.OOM),  # the first system failure names the cause
    ([RankResult(0, S.CANCELLED), RankResult(1, S.OK)], False, Cause.SYSTEM_ERROR),
])
def test_classify_names_the_cause(results, settled, cause):
    assert classify(results, settled)[2] == cause


@pytest.mark.parametrize(
    "outcome, sys_r, usr_r, max_r, max_u, action, new_sys, new_usr",
    [
        (AttemptOutcome.SYSTEM_FAILURE, 0, 0, 3, 0, Action.RESTART, 1, 0),
        (AttemptOutcome.SYSTEM_FAILURE, 3, 0, 3, 0, Action.FAIL, 3, 0),
        (AttemptOutcome.SYSTEM_FAILURE, 0, 0, 0, 5, Action.FAIL, 0, 0),
        (AttemptOutcome.USER_FAILURE, 0, 0, 3, 0, Action.FAIL, 0, 0),
        (AttemptOutcome.USER_FAILURE, 0, 0, 3, 1, Action.RESTART, 0, 1),
        (AttemptOutcome.USER_FAILURE, 2, 1, 3, 1, Action.FAIL, 2, 1),
    ],
)
def test_decide_recovery(outcome, sys_r, usr_r, max_r, max_u, action, new_sys, new_usr):
    d = decide_recovery(outcome, "Traceback\nValueError: boom", system_restarts=sys_r, user_retries=usr_r,
                        max_restarts=max_r, max_user_retries=max_u)
    assert (d.action, d.system_restarts, d.user_retries) == (action, new_sys, new_usr)
    if action == Action.RESTART:
        assert "ValueError: boom" in d.reason


def test_decide_recovery_rejects_non_failures():
    with pytest.raises(ValueError):
        decide_recovery(AttemptOutcome.SUCCEEDED, None, system_restarts=0, user_retries=0, max_restarts=1,
                        max_user_retries=1)
