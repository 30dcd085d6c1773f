"""Lifecycle steps: what the control loop should do about one job, decided from what it observed.
Pure functions, no Ray.

Owns: ``Step`` — one decision (action + cause + the transition it makes, with its reason and the
fields it sets) — and the decision for each non-terminal state:

* PENDING     → START when admission admits it (``start_steps``; the admission policy decides);
* PLACING     → MARK_RUNNING when the placement group is ready; after PLACEMENT_TIMEOUT_S,
  REQUEUE (back to PENDING, capacity given back) — at most ``max_placement_timeouts`` times, then
  FAIL with cause ``no_resources``;
* RUNNING     → SUCCEED / RECOVER / FAIL from the ranks' outcomes (``recovery``), FAIL on
  ``max_runtime_s``, RECOVER with cause ``coordinator_restart`` (no budget spent) when its ranks
  died with a previous Coordinator;
* RECOVERING  → START again (cause ``resumed``).

The Coordinator applies a Step in one place (``control/reconcile.py``), so every decision can be
unit-tested, logged and replayed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from raycluster.policy.recovery import Action as RecoveryAction
from raycluster.policy.recovery import AttemptOutcome, RankResult, classify, decide_recovery
from raycluster.store.lifecycle import Cause, JobState


class Action(str, Enum):
    START = "start"  # -> PLACING: commit the attempt, create its placement group, launch its ranks
    MARK_RUNNING = "mark_running"  # PLACING -> RUNNING: the gang is placed
    REQUEUE = "requeue"  # PLACING -> PENDING: tear the attempt down, queue again
    SUCCEED = "succeed"  # RUNNING -> SUCCEEDED
    RECOVER = "recover"  # RUNNING -> RECOVERING: tear down; placed again from the latest checkpoint
    FAIL = "fail"  # -> FAILED: tear down
    PREEMPT = "preempt"  # RUNNING -> PENDING: checkpointed, torn down, queued again for a higher-priority job


@dataclass(frozen=True)
class Step:
    job_id: str
    action: Action
    src: JobState
    dst: JobState
    cause: Cause
    reason: str
    fields: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.job_id} {self.action.value}: {self.src.value} -> {self.dst.value} [{self.cause.value}] {self.reason}"


@dataclass(frozen=True)
class JobView:
    """What the step decisions need to know about a job (a JobRecord has all of it)."""

    id: str
    state: JobState
    attempt: int = 0
    system_restarts: int = 0
    user_retries: int = 0
    started_at: float | None = None
    attempt_started_at: float | None = None
    placement_timeouts: int = 0
    preempted: int = 0
    cause: Cause | None = None
    attempt_spot: str | None = None


@dataclass(frozen=True)
class Limits:
    """The job's spec limits that steps look at."""

    max_restarts: int = 3
    max_user_retries: int = 0
    max_runtime_s: float | None = None


def next_attempt_spot(job: JobView) -> str | None:
    """The spot choice of a job's next attempt when it is not its spec's: ``only`` when it is placed
    again after a spot return (moved back to spot for cost, it must not land on the next free
    on-demand room); else None (its spec's)."""
    return "only" if job.state == JobState.RECOVERING and job.cause == Cause.SPOT_RETURN else None


def start_step(job: JobView, now: float, world_size: int | None = None, max_workers: int | None = None) -> Step:
    """PENDING (admitted) or RECOVERING (placing again) -> PLACING with a new attempt number, at
    ``world_size`` ranks (an elastic gang's size for this attempt; its reason says when it is not
    ``max_workers``, its largest), on spot only after a spot return (``next_attempt_spot``)."""
    if job.state == JobState.PENDING:
        cause, reason = Cause.ADMITTED, "admitted"
    else:
        cause, reason = Cause.RESUMED, "placing again from the latest checkpoint"
    fields: dict[str, Any] = {"attempt": job.attempt + 1}
    if world_size is not None:
        fields["world_size"] = world_size
        if max_workers is not None and world_size != max_workers:
            reason += f" at {world_size} of {max_workers} workers (elastic)"
    spot = next_attempt_spot(job)
    if spot is not None or job.attempt_spot is not None:
        fields["attempt_spot"] = spot
        if spot == "only":
            reason += ", on spot only (moved back to spot)"
    return Step(job.id, Action.START, job.state, JobState.PLACING, cause, reason, fields)


def preempt_step(job: JobView, reason: str, preempted: int) -> Step:
    """RUNNING -> PENDING for a higher-priority job (``policy.preemption`` chose it; it was asked to
    checkpoint first): queued again with its place in the queue, no restart spent."""
    return Step(job.id, Action.PREEMPT, JobState.RUNNING, JobState.PENDING, Cause.PREEMPTED, reason,
                {"preempted": preempted})


def moved_step(job: JobView, cause: Cause, reason: str, error: str | None = None) -> Step:
    """RUNNING -> RECOVERING for a reason that is not the job's fault nor a failure to count: its
    node given back for the budget (``budget``), its spot node taken back by the market
    (``spot_preempted``), moved off an unhealthy or drained node. No restart is spent: it is placed
    again and resumes from its newest checkpoint. (Spot preemptions are bounded elsewhere: an
    ``auto`` gang preempted ``spot_fallback_preemptions`` times is rented on-demand.)"""
    fields = {"error": error} if error else {}
    return Step(job.id, Action.RECOVER, JobState.RUNNING, JobState.RECOVERING, cause, reason, fields)


def deadline_step(job: JobView, deadline: float, expected_runtime_s: float | None, now: float) -> Step | None:
    """FAIL (cause ``deadline``) a job that can no longer finish by its ``deadline``: the deadline has
    passed (whatever its state), or it is still queued and ``expected_runtime_s`` no longer fits
    before it. None while it still can."""
    if job.state.terminal:
        return None
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline))
    if now >= deadline:
        why = f"deadline {at} passed while {job.state.value}"
    elif job.state == JobState.PENDING and expected_runtime_s and now + expected_runtime_s > deadline:
        why = (f"cannot finish by its deadline {at}: expected_runtime_s {expected_runtime_s:g} > "
               f"{deadline - now:.0f} s left")
    else:
        return None
    return Step(job.id, Action.FAIL, job.state, JobState.FAILED, Cause.DEADLINE, why, {"finished_at": now, "error": why})


def decide_placing(job: JobView, *, ready: bool, placing_for_s: float, timeout_s: float,
                   max_timeouts: int, now: float) -> Step | None:
    if ready:
        return Step(job.id, Action.MARK_RUNNING, JobState.PLACING, JobState.RUNNING, Cause.PLACED, "gang placed",
                    {"attempt_started_at": now, "started_at": job.started_at or now})
    if placing_for_s <= timeout_s:
        return None
    timeouts = job.placement_timeouts + 1
    if timeouts >= max_timeouts:
        return Step(job.id, Action.FAIL, JobState.PLACING, JobState.FAILED, Cause.NO_RESOURCES,
                    f"the gang could not be placed: {timeouts} placements timed out after {timeout_s:.0f}s each",
                    {"finished_at": now, "placement_timeouts": timeouts,
                     "error": "no resources: the cluster never had room for the whole gang at once (nodes lost, "
                              "or resources held by something other than raycluster); resubmit when it has"})
    return Step(job.id, Action.REQUEUE, JobState.PLACING, JobState.PENDING, Cause.PLACEMENT_TIMEOUT,
                f"placement not ready after {timeout_s:.0f}s; queued again ({timeouts}/{max_timeouts})",
                {"placement_timeouts": timeouts})


def decide_running(job: JobView, limits: Limits, results: list[RankResult] | None, *, settled: bool,
                   now: float) -> Step | None:
    """``results`` None: this Coordinator holds no ranks of the attempt (they died with the previous one)."""
    if results is None:
        return Step(job.id, Action.RECOVER, JobState.RUNNING, JobState.RECOVERING, Cause.COORDINATOR_RESTART,
                    "coordinator restarted; resuming from the latest checkpoint")
    outcome, error, cause = classify(results, settled)
    if outcome == AttemptOutcome.RUNNING:
        if limits.max_runtime_s and job.attempt_started_at and now - job.attempt_started_at > limits.max_runtime_s:
            return Step(job.id, Action.FAIL, JobState.RUNNING, JobState.FAILED, Cause.TIMEOUT, "timeout",
                        {"finished_at": now, "error": f"exceeded max_runtime_s={limits.max_runtime_s:g}"})
        return None
    if outcome == AttemptOutcome.SUCCEEDED:
        return Step(job.id, Action.SUCCEED, JobState.RUNNING, JobState.SUCCEEDED, Cause.FINISHED,
                    "all ranks finished", {"finished_at": now, "result": results[0].result if results else None})
    decision = decide_recovery(outcome, error, system_restarts=job.system_restarts, user_retries=job.user_retries,
                               max_restarts=limits.max_restarts, max_user_retries=limits.max_user_retries)
    assert cause is not None
    if decision.action == RecoveryAction.RESTART:
        return Step(job.id, Action.RECOVER, JobState.RUNNING, JobState.RECOVERING, cause, decision.reason,
                    {"error": error, "system_restarts": decision.system_restarts,
                     "user_retries": decision.user_retries})
    return Step(job.id, Action.FAIL, JobState.RUNNING, JobState.FAILED, cause, decision.reason,
                {"finished_at": now, "error": error})
