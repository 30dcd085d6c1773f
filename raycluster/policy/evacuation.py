"""Checkpoint-then-move, the one protocol for taking a running gang off where it runs. Pure, no Ray.

Owns: ``Move`` — one gang being moved: why (``cause``, ``reason``), since when, the newest complete
checkpoint step it had when asked (``before_step``), how long to wait for a newer one (``wait_s``)
and how it ends (``kind``) — as stored on the job row (``JobRecord.moving``) so a Coordinator
restart mid-move neither loses nor repeats it; ``decide_move`` — wait, move now or drop, from what
was observed; ``move_step`` — the transition that ends a move.

Who moves gangs, all through this protocol (``control/evacuation.py`` is the one mechanism):

* preemption for a higher-priority job (``REQUEUE``: RUNNING → PENDING, cause ``preempted``);
* node health and drain (``RECOVER``: RUNNING → RECOVERING, ``node_unhealthy`` / ``node_drained``);
* the BudgetAutoscaler giving a busy rented node back, or a spot notice (``HOLD``: the asker drains
  the node and then moves the gang itself, ``budget`` / ``spot_preempted``; a hold nobody ends is
  dropped ``HOLD_GRACE_S`` after its wait — the gang keeps running, nothing is lost).

No move spends a restart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from raycluster.policy.steps import JobView, Step, moved_step, preempt_step
from raycluster.store.lifecycle import Cause, JobState

HOLD_GRACE_S = 120.0  # a HOLD move its asker never ended is dropped this long after its wait


class MoveKind(str, Enum):
    REQUEUE = "requeue"  # queued again (its place in the queue kept): preemption
    RECOVER = "recover"  # placed again elsewhere at once: node health, drain
    HOLD = "hold"  # the asker ends it (``move_now``) once the node is drained: budget, spot notice


class Verdict(str, Enum):
    WAIT = "wait"  # no newer checkpoint yet, still within the wait
    MOVE = "move"  # checkpointed (or waited long enough): end it now
    DROP = "drop"  # the gang is no longer there (ended, moved on) or a hold was never ended


@dataclass(frozen=True)
class Move:
    job_id: str
    attempt: int
    cause: Cause
    reason: str
    since: float
    before_step: int | None
    wait_s: float
    kind: MoveKind
    for_job: str | None = None  # (preemption) the job the room is made for

    def to_row(self) -> dict[str, Any]:
        d = asdict(self)
        d["cause"], d["kind"] = self.cause.value, self.kind.value
        return d

    @classmethod
    def from_row(cls, d: dict[str, Any]) -> "Move":
        return cls(str(d["job_id"]), int(d["attempt"]), Cause(d["cause"]), str(d["reason"]), float(d["since"]),
                   None if d.get("before_step") is None else int(d["before_step"]), float(d["wait_s"]),
                   MoveKind(d["kind"]), d.get("for_job"))


def checkpointed(move: Move, newest_step: int | None) -> bool:
    """Whether a checkpoint newer than the one it had when asked is complete."""
    return newest_step is not None and (move.before_step is None or newest_step > move.before_step)


def decide_move(move: Move, state: JobState | None, attempt: int | None, newest_step: int | None,
                now: float) -> Verdict:
    """What to do about one move now. ``state``/``attempt``: the job's, None when it is gone."""
    if state != JobState.RUNNING or attempt != move.attempt:
        return Verdict.DROP
    waited_s = now - move.since
    if move.kind == MoveKind.HOLD:
        return Verdict.DROP if waited_s >= move.wait_s + HOLD_GRACE_S else Verdict.WAIT
    if checkpointed(move, newest_step) or waited_s >= move.wait_s:
        return Verdict.MOVE
    return Verdict.WAIT


def where_it_resumes(move: Move, newest_step: int | None) -> str:
    where = (f"resumes from its checkpoint at step {newest_step}" if newest_step is not None
             else "no checkpoint: starts over")
    if move.kind != MoveKind.HOLD and move.wait_s > 0 and not checkpointed(move, newest_step):
        where += f" (no newer checkpoint within {move.wait_s:.0f} s)"
    return where


def move_step(job: JobView, move: Move, newest_step: int | None, note: str = "") -> Step:
    """The transition that ends ``move``; no restart is spent. ``note``: why it ends now if not the
    usual way (a Coordinator restart mid-move, a node presumed dead)."""
    where = where_it_resumes(move, newest_step)
    reason = f"{move.reason}; {note + '; ' if note else ''}{where}"
    if move.kind == MoveKind.REQUEUE:
        return preempt_step(job, reason, job.preempted + 1)
    return moved_step(job, move.cause, reason)
