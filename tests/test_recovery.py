"""Recovery policy: pure, parametrized, no cluster."""

import pytest

from raycluster.recovery import (Action, AttemptOutcome, RankResult, RankStatus as S, classify,
                                 decide_recovery)


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
        ((S.USER_ERROR, S.USER_ERROR), False, AttemptOutcome.USER_FAILURE),
        ((S.CANCELLED, S.OK), False, AttemptOutcome.SYSTEM_FAILURE),
    ],
)
def test_classify(statuses, settled, outcome):
    assert classify(rr(*statuses), settled)[0] == outcome


def test_classify_keeps_the_system_error_text():
    out, err = classify(rr(S.USER_ERROR, S.SYSTEM_ERROR), settled=False)
    assert out == AttemptOutcome.SYSTEM_FAILURE and "rank 1" in err and "err1" in err


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
