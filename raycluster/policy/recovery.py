"""Recovery policy: how an attempt ended and what happens next. Pure functions, no Ray.

Owns: classifying the per-rank outcomes of one attempt (SUCCESS, SYSTEM failure, USER error)
and deciding restart vs fail from the job's budgets. Rules:

* Any rank that ended through a system failure (node died, worker crashed, OOM-killed,
  runtime setup failed) makes the whole attempt a SYSTEM failure — peers of a dead rank usually
  fail with a socket error inside user code, which must not be blamed on the user.
* Otherwise, any user-code exception makes it a USER failure (the first traceback is kept).
* SYSTEM failures restart the gang from the latest checkpoint while ``system_restarts <
  max_restarts``; USER failures retry while ``user_retries < max_user_retries``; then FAILED.
* Coordinator restarts are not the job's fault and consume no budget.
* The attempt's ``Cause`` is the first system failure's (node_lost, worker_crashed, oom,
  system_error) or ``user_error``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from raycluster.store.lifecycle import Cause


class RankStatus(str, Enum):
    RUNNING = "running"
    OK = "ok"
    USER_ERROR = "user_error"
    SYSTEM_ERROR = "system_error"
    CANCELLED = "cancelled"  # we cancelled it while tearing the gang down


class AttemptOutcome(str, Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    SYSTEM_FAILURE = "system_failure"
    USER_FAILURE = "user_failure"


@dataclass(frozen=True)
class RankResult:
    rank: int
    status: RankStatus
    error: str | None = None
    cause: Cause | None = None  # for SYSTEM_ERROR: node_lost / worker_crashed / oom / system_error
    result: Any = None  # what train() returned (rank 0; OK only)


def classify(results: list[RankResult], settled: bool) -> tuple[AttemptOutcome, str | None, Cause | None]:
    """(outcome, error, cause) of an attempt from its ranks. ``settled``: stop waiting for ranks
    still running. Only a user error waits for them (a peer's lost socket shows up as one before
    Ray reports the node that died); a system error is judged at once: any system error makes the
    whole attempt a system failure, so no rank reporting later can change the verdict, and the
    gang recovers without waiting ``FAILURE_SETTLE_S`` out."""
    failed = [r for r in results if r.status in (RankStatus.USER_ERROR, RankStatus.SYSTEM_ERROR)]
    running = [r for r in results if r.status == RankStatus.RUNNING]
    if not failed:
        if not running and all(r.status == RankStatus.OK for r in results):
            return AttemptOutcome.SUCCEEDED, None, Cause.FINISHED
        if running:
            return AttemptOutcome.RUNNING, None, None
        return AttemptOutcome.SYSTEM_FAILURE, "ranks were cancelled", Cause.SYSTEM_ERROR
    system = [r for r in failed if r.status == RankStatus.SYSTEM_ERROR]
    if running and not settled and not system:
        return AttemptOutcome.RUNNING, None, None  # let the other ranks report before judging
    if system:
        first = system[0]
        return AttemptOutcome.SYSTEM_FAILURE, f"rank {first.rank}: {first.error}", first.cause or Cause.SYSTEM_ERROR
    return AttemptOutcome.USER_FAILURE, f"rank {failed[0].rank}: {failed[0].error}", Cause.USER_ERROR


class Action(str, Enum):
    RESTART = "restart"
    FAIL = "fail"


@dataclass(frozen=True)
class RecoveryDecision:
    action: Action
    reason: str
    system_restarts: int
    user_retries: int


def decide_recovery(outcome: AttemptOutcome, error: str | None, *, system_restarts: int, user_retries: int,
                    max_restarts: int, max_user_retries: int) -> RecoveryDecision:
    if outcome == AttemptOutcome.SYSTEM_FAILURE:
        if system_restarts < max_restarts:
            return RecoveryDecision(Action.RESTART, f"system failure, restart {system_restarts + 1}/{max_restarts}"
                                    f" from the latest checkpoint: {_first_line(error)}",
                                    system_restarts + 1, user_retries)
        return RecoveryDecision(Action.FAIL, f"system failure and max_restarts={max_restarts} used up",
                                system_restarts, user_retries)
    if outcome == AttemptOutcome.USER_FAILURE:
        if user_retries < max_user_retries:
            return RecoveryDecision(Action.RESTART, f"user code error, retry {user_retries + 1}/{max_user_retries}"
                                    f": {_first_line(error)}", system_restarts, user_retries + 1)
        return RecoveryDecision(Action.FAIL, "user code raised an exception", system_restarts, user_retries)
    raise ValueError(f"no recovery decision for outcome {outcome}")


def _first_line(error: str | None) -> str:
    if not error:
        return ""
    lines = [ln for ln in error.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""
