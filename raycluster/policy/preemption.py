"""Preemption: which running jobs make room for a higher-priority job that waited too long. Pure, no Ray.

Owns: ``decide_preemption(PreemptionContext, now) -> PreemptionDecision``.

Policy (documented in the README):
* Only the first job in queue order that does not fit (the *blocked* job, capacity-bound — a job
  held back by its tenant's quota never preempts) and only once it has waited ``after_s``
  (``PREEMPT_AFTER_S``) since it was queued.
* Candidates: running gangs of strictly lower priority that are preemptible (``preemptible: false``
  opts out) and were preempted fewer than ``max_per_hour`` times in the last hour.
* Order: lowest priority first, then least lost work (seconds since its newest checkpoint, or since
  its attempt started), then fewest preemptions in the last hour, then job id.
* Victims are taken in that order until the blocked gang fits on the free resources plus theirs;
  then any victim whose room turns out not to be needed (taken earlier, on another node) is spared,
  latest-ordered first. If even every candidate would not make room, nobody is preempted.

A victim is asked to checkpoint now, then stopped and queued again (PENDING, cause ``preempted``:
no restart spent), and resumes from that checkpoint when it is admitted again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raycluster.policy.placement import Resources, place


@dataclass(frozen=True)
class RunningGang:
    job_id: str
    priority: int
    bundles: tuple[tuple[str, Resources], ...]  # (node, bundle) of each gang member
    preemptible: bool = True
    lost_work_s: float = 0.0
    preemptions_last_hour: int = 0


@dataclass(frozen=True)
class Waiter:
    job_id: str
    priority: int
    bundles: tuple[Resources, ...]
    strategy: str
    queued_at: float


@dataclass(frozen=True)
class PreemptionContext:
    waiter: Waiter
    running: tuple[RunningGang, ...]
    free_by_node: dict[str, Resources]
    after_s: float
    max_per_hour: int


@dataclass
class PreemptionDecision:
    victims: list[str] = field(default_factory=list)
    reason: str = ""


def victim_order(g: RunningGang) -> tuple:
    return (g.priority, g.lost_work_s, g.preemptions_last_hour, g.job_id)


def _with(free: dict[str, Resources], gang: RunningGang, sign: float) -> dict[str, Resources]:
    out = {n: dict(r) for n, r in free.items()}
    for node, b in gang.bundles:
        have = out.setdefault(node, {})
        for k, v in b.items():
            have[k] = have.get(k, 0.0) + sign * v
    return out


def decide_preemption(ctx: PreemptionContext, now: float) -> PreemptionDecision:
    w = ctx.waiter
    waited = now - w.queued_at
    if waited < ctx.after_s:
        return PreemptionDecision(reason=f"{w.job_id} waited {waited:.0f} s < {ctx.after_s:.0f} s")
    cands = sorted((g for g in ctx.running if g.priority < w.priority and g.preemptible
                    and g.preemptions_last_hour < ctx.max_per_hour), key=victim_order)
    if not cands:
        return PreemptionDecision(reason=f"no preemptible job of lower priority than {w.priority} is running")
    free = ctx.free_by_node
    chosen: list[RunningGang] = []
    for g in cands:
        free = _with(free, g, +1)
        chosen.append(g)
        if place(w.bundles, free, w.strategy) is not None:
            break
    else:
        return PreemptionDecision(reason=f"stopping every candidate ({len(cands)}) would not make room for {w.job_id}")
    for g in reversed(chosen[:-1]):  # spare a victim whose room is not needed after all
        trial = _with(free, g, -1)
        if place(w.bundles, trial, w.strategy) is not None:
            free = trial
            chosen.remove(g)
    return PreemptionDecision(
        victims=[g.job_id for g in chosen],
        reason=f"preempted for {w.job_id} (priority {w.priority}, waited {waited:.0f} s)")
