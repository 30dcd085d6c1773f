"""Preemption of lower-priority jobs for a blocked one, a part of the Coordinator's loop. The seam
between ``policy.preemption`` (the pure choice of victims) and the one move mechanism
(``control/evacuation.py``: a victim is asked to checkpoint, then queued again with its place in
the queue kept, no restart spent).

Owns: the job admission last found blocked (``blocked``, set by the loop after each admission
decision), when victims were last looked for, and the quiet window after a preemption in which its
beneficiary is not given more victims (admission places it first). While a preemption is in flight
no other is decided, so a blocked job never takes more victims than it needs.

What it is handed: the blocked job's row and bundles, the placed gangs with their nodes and which
of them may be preempted, their recent preemptions and newest checkpoints, the free view, and
whether the BudgetAutoscaler may still rent room for a job.
"""

from __future__ import annotations

import logging
from typing import Callable

from raycluster import constants as C
from raycluster.control.evacuation import Evacuations
from raycluster.policy.evacuation import Move, MoveKind
from raycluster.policy.preemption import PreemptionContext, RunningGang, Waiter, decide_preemption
from raycluster.store.jobs import JobRecord
from raycluster.store.lifecycle import Cause

log = logging.getLogger("raycluster.coordinator")


class Preemptions:
    def __init__(self, evacuations: Evacuations, *, job: Callable[[str], JobRecord],
                 waiter: Callable[[str], tuple[JobRecord, list, str] | None],
                 placed_gangs: Callable[[], list[tuple[JobRecord, list[str]]]],
                 preemptible_bundles: Callable[[JobRecord], list | None],
                 recent_preemptions: Callable[[list[str], float], dict[str, int]],
                 newest_checkpoint_at: Callable[[str], float | None],
                 free: Callable[[], dict[str, dict[str, float]]],
                 may_rent_for: Callable[[str], bool], forget_queue: Callable[[], None]):
        self.evacuations = evacuations
        self._job = job  # an active job's row
        self._waiter = waiter  # a pending job's (row, bundles, strategy), None: not pending
        self._placed_gangs = placed_gangs  # each placed RUNNING gang with the node of each bundle
        self._preemptible_bundles = preemptible_bundles  # a gang's bundles; None: not preemptible
        self._recent = recent_preemptions  # (jobs, since) -> times each was preempted since
        self._newest_checkpoint_at = newest_checkpoint_at
        self._free = free
        self._may_rent_for = may_rent_for  # the autoscaler may still rent room for this job
        self._forget_queue = forget_queue
        self.blocked: str | None = None
        self._last_check = 0.0
        self._quiet_until: dict[str, float] = {}  # beneficiary -> no new victims for it before then
        evacuations.ended.append(self._moved)

    @property
    def in_flight(self) -> dict[str, Move]:
        return self.evacuations.of(Cause.PREEMPTED)

    def __bool__(self) -> bool:
        return self.blocked is not None or bool(self.in_flight)

    def tick(self, now: float) -> None:
        """When no preemption is in flight, maybe choose victims for the blocked job."""
        if now - self._last_check < C.PREEMPT_CHECK_INTERVAL_S:
            return
        self._last_check = now
        if self.in_flight or C.PREEMPT_AFTER_S <= 0 or self.blocked is None:
            return
        found = self._waiter(self.blocked)
        if found is None:
            return
        blocked, bundles, strategy = found
        if now - blocked.queued_at < C.PREEMPT_AFTER_S:
            return
        if now < self._quiet_until.get(blocked.id, 0.0):
            return  # its victims' room is being given back: let admission place it first
        if self._may_rent_for(blocked.id):
            return  # the autoscaler may still rent room for it
        running = self.gangs_below(blocked.priority, now)
        if not running:
            return
        ctx = PreemptionContext(Waiter(blocked.id, blocked.priority, tuple(bundles), strategy, blocked.queued_at),
                                tuple(running), self._free(), C.PREEMPT_AFTER_S, C.PREEMPT_MAX_PER_HOUR)
        decision = decide_preemption(ctx, now)
        if not decision.victims:
            log.debug("no preemption: %s", decision.reason)
            return
        for jid in decision.victims:
            self.evacuations.ask(self._job(jid), Cause.PREEMPTED, decision.reason, C.PREEMPT_CHECKPOINT_WAIT_S,
                                 MoveKind.REQUEUE, now, for_job=blocked.id)
        log.info("preempting %s for %s", ", ".join(decision.victims), blocked.id)

    def gangs_below(self, priority: int, now: float) -> list[RunningGang]:
        """The placed, preemptible RUNNING gangs below ``priority``, with the work each would lose
        (since its attempt started or its newest checkpoint) and its preemptions in the last hour."""
        found = [(rec, nodes, bundles) for rec, nodes in self._placed_gangs()
                 if rec.priority < priority and (bundles := self._preemptible_bundles(rec)) is not None]
        if not found:
            return []
        recent = self._recent([rec.id for rec, _n, _b in found], now - 3600)
        out = []
        for rec, nodes, bundles in found:
            since = max(rec.attempt_started_at or 0.0, self._newest_checkpoint_at(rec.id) or 0.0)
            out.append(RunningGang(rec.id, rec.priority, tuple(zip(nodes, bundles)), True,
                                   max(0.0, now - since) if since else 0.0, recent.get(rec.id, 0)))
        return out

    def _moved(self, move: Move, now: float) -> None:
        if move.cause != Cause.PREEMPTED:
            return
        self._forget_queue()
        self._quiet_until = {w: t for w, t in self._quiet_until.items() if t > now}
        if move.for_job:
            self._quiet_until[move.for_job] = now + C.PREEMPT_GRACE_S
