"""The straightforward admission policy, kept verbatim as the reference the fast one must agree with
(tests/unit/test_admission_property.py). Not used by the runtime."""

from __future__ import annotations

from dataclasses import dataclass, field

Resources = dict[str, float]

_EPS = 1e-9


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    priority: int
    queued_at: float
    bundles: tuple[Resources, ...]
    strategy: str = "PACK"


@dataclass(frozen=True)
class AdmissionContext:
    queue: tuple[QueuedJob, ...]
    free_by_node: dict[str, Resources]
    starvation_threshold_s: float
    aging_s: float


@dataclass
class AdmissionDecision:
    admit: list[str] = field(default_factory=list)
    reserved_for: str | None = None
    waiting: dict[str, str] = field(default_factory=dict)


def _fits(bundle: Resources, free: Resources) -> bool:
    return all(free.get(k, 0.0) + _EPS >= v for k, v in bundle.items() if v > 0)


def _take(bundle: Resources, free: Resources) -> None:
    for k, v in bundle.items():
        free[k] = free.get(k, 0.0) - v


def place(bundles: tuple[Resources, ...] | list[Resources], free_by_node: dict[str, Resources],
          strategy: str) -> tuple[list[str], dict[str, Resources]] | None:
    """Return (node per bundle, remaining free) if the gang fits now, else None."""
    free = {n: dict(r) for n, r in free_by_node.items()}
    nodes = sorted(free, key=lambda n: (-free[n].get("GPU", 0.0), -free[n].get("CPU", 0.0), n))
    assignment: list[str] = []
    if strategy == "STRICT_PACK":
        total: Resources = {}
        for b in bundles:
            for k, v in b.items():
                total[k] = total.get(k, 0.0) + v
        for n in nodes:
            if _fits(total, free[n]):
                _take(total, free[n])
                return [n] * len(bundles), free
        return None
    used: dict[str, int] = {}
    for b in bundles:
        if strategy == "STRICT_SPREAD":
            candidates = [n for n in nodes if n not in used]
        elif strategy == "SPREAD":
            candidates = sorted(nodes, key=lambda n: used.get(n, 0))  # stable: least-used first
        else:  # PACK: nodes already used by this gang first
            candidates = sorted(nodes, key=lambda n: 0 if n in used else 1)
        chosen = next((n for n in candidates if _fits(b, free[n])), None)
        if chosen is None:
            return None
        _take(b, free[chosen])
        used[chosen] = used.get(chosen, 0) + 1
        assignment.append(chosen)
    return assignment, free


def infeasible_reason(bundles: list[Resources], strategy: str, total_by_node: dict[str, Resources]) -> str | None:
    """Why this gang can never be placed on a cluster of these node totals (None if it can)."""
    if not total_by_node:
        return "the cluster has no nodes"
    if place(bundles, total_by_node, strategy) is not None:
        return None
    need: Resources = {}
    for b in bundles:
        for k, v in b.items():
            need[k] = need.get(k, 0.0) + v
    have: Resources = {}
    for r in total_by_node.values():
        for k, v in r.items():
            have[k] = have.get(k, 0.0) + v
    short = [f"{k} {need[k]:g} > {have.get(k, 0.0):g}" for k in sorted(need) if need[k] > have.get(k, 0.0) + _EPS]
    if short:
        return "the gang needs more than the whole cluster has: " + ", ".join(short)
    return (f"no way to place {len(bundles)} bundles of {bundles[0]} with strategy {strategy} "
            f"on {len(total_by_node)} nodes")


def effective_priority_order(job: QueuedJob, aging_s: float) -> float:
    """Higher first. priority + (now - queued_at) / aging_s, times aging_s, less now: the same
    order at every instant (the runtime keeps its queue order across passes)."""
    if aging_s > 0:
        return job.priority * aging_s - job.queued_at
    return float(job.priority)


def decide_admission(ctx: AdmissionContext, now: float) -> AdmissionDecision:
    order = sorted(
        ctx.queue,
        key=lambda j: (-effective_priority_order(j, ctx.aging_s), j.queued_at, j.job_id),
    )
    free = {n: dict(r) for n, r in ctx.free_by_node.items()}
    decision = AdmissionDecision()
    blocked: QueuedJob | None = None
    for job in order:
        if decision.reserved_for is not None:
            decision.waiting[job.job_id] = f"capacity reserved for {decision.reserved_for}"
            continue
        placed = place(job.bundles, free, job.strategy)
        if placed is not None:
            decision.admit.append(job.job_id)
            free = placed[1]
            continue
        decision.waiting[job.job_id] = "waiting for capacity"
        if blocked is None:
            blocked = job
            if now - job.queued_at >= ctx.starvation_threshold_s:
                decision.reserved_for = job.job_id
                decision.waiting[job.job_id] = "waiting for capacity (holds reservation)"
    return decision
