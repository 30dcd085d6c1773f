"""Admission policy: which queued jobs start now. Pure functions, no Ray.

Owns: gang feasibility (can a set of bundles be placed on per-node free resources under a
placement strategy) and the queue policy.

Policy (documented in the README):
* Order: effective priority, highest first; FIFO (time queued) within equal effective priority.
  Effective priority = priority + waited_s / AGING_S (aging; AGING_S=0 disables it).
* Gang: a job is admitted only if its whole gang fits on the free resources now.
* Backfill with bounded starvation: when the first job in order does not fit, later (lower
  effective priority) jobs that do fit may start — until that blocked job has waited
  STARVATION_THRESHOLD_S. From then on it holds a *reservation*: nothing behind it starts, so
  running jobs drain until its gang fits. A stream of small jobs can therefore delay a big
  high-priority job by at most the threshold plus the runtime of what is already running.

A pass costs about the number of queued jobs, not jobs x nodes (``FreeView``): nodes are kept in
placement order as placements change them, and a gang of identical bundles that cannot fit is
refused from per-shape capacity counts without a scan. The decisions are exactly those of the
straightforward policy (tests/unit/test_admission_property.py; scripts/bench_queue.py).
"""

from __future__ import annotations

import bisect
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
    # the one bundle of a gang of identical bundles, as a hashable key (None: bundles differ)
    shape: tuple | None = field(init=False, compare=False, repr=False, default=None)

    def __post_init__(self):
        object.__setattr__(self, "shape", shape_of(self.bundles))


def shape_of(bundles) -> tuple | None:
    """The one bundle of a gang of identical bundles as a hashable key; None if the bundles differ."""
    first = bundles[0] if bundles else None
    if first is None or any(b != first for b in bundles[1:]):
        return None
    return tuple(sorted(first.items()))


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


class FreeView:
    """Free resources per node during one decision pass, built for many placements.

    * Copy-on-write: a node's dict is copied only when a placement takes from it.
    * The nodes stay in placement order — most free GPUs, then most free CPUs, then node id — in a
      list kept sorted as placements change nodes (bisect), instead of sorting every node for every
      gang tried.
    * For each bundle shape seen, how many such bundles each node could still take is kept per node and
      summed, so a gang of identical bundles that cannot fit is refused in O(1): PACK/SPREAD need
      ``n`` in total, STRICT_SPREAD ``n`` nodes with room for one, STRICT_PACK one node with room for
      ``n``. These counts are upper bounds (a little slack for float rounding): they only ever refuse
      gangs the greedy placement would refuse too; every gang they let through is placed by exactly
      the greedy placement of ``place`` (same node order, same first-fit choices).
    """

    def __init__(self, free_by_node: dict[str, Resources]):
        self._base = free_by_node
        self._own: dict[str, Resources] = {}
        self._keys = sorted(self._key(n) for n in free_by_node)
        self._caps: dict[tuple, tuple[dict[str, int], list[int]]] = {}  # shape -> (per node, [sum, nodes>=1])

    def get(self, node: str) -> Resources:
        return self._own.get(node) or self._base[node]

    def _key(self, node: str) -> tuple[float, float, str]:
        r = self.get(node)
        return (-r.get("GPU", 0.0), -r.get("CPU", 0.0), node)

    def snapshot(self) -> dict[str, Resources]:
        return {n: dict(self.get(n)) for n in self._base}

    # ---- bundle capacities ------------------------------------------------------------------------
    @staticmethod
    def _cap(bundle: Resources, free: Resources) -> int:
        need = [(k, v) for k, v in bundle.items() if v > 0]
        if not need:
            return 1 << 30
        return max(0, min(int((free.get(k, 0.0) + _EPS) / v + 1e-6) for k, v in need))

    def surely_cannot_fit(self, shape: tuple | None, n: int, strategy: str) -> bool:
        """True only if no placement of ``n`` bundles of ``shape`` exists (so the greedy fails too);
        ``shape`` None (bundles that differ) is never refused here."""
        if shape is None or n == 0:
            return False
        got = self._caps.get(shape)
        if got is None:
            bundle = dict(shape)
            per = {node: self._cap(bundle, self.get(node)) for node in self._base}
            got = self._caps[shape] = (per, [sum(per.values()), sum(1 for c in per.values() if c > 0)], bundle)
        per, (total, nodes_with_room), _bundle = got
        if strategy == "STRICT_SPREAD":
            return nodes_with_room < n
        if strategy == "STRICT_PACK":
            return not any(c >= n for c in per.values()) if nodes_with_room else True
        return total < n

    # ---- taking -----------------------------------------------------------------------------------
    def _set(self, node: str, free: Resources) -> None:
        old = self._key(node)
        del self._keys[bisect.bisect_left(self._keys, old)]
        self._own[node] = free
        bisect.insort(self._keys, self._key(node))
        for per, agg, bundle in self._caps.values():
            c_old, c_new = per[node], self._cap(bundle, free)
            if c_old != c_new:
                per[node] = c_new
                agg[0] += c_new - c_old
                agg[1] += (c_new > 0) - (c_old > 0)

    def place(self, bundles, strategy: str, shape: tuple | None = None) -> list[str] | None:
        """Place the gang greedily (exactly as ``place``); take its resources if it fits. ``shape``:
        the gang's one bundle as a key when all its bundles are identical (QueuedJob.shape)."""
        if self.surely_cannot_fit(shape, len(bundles), strategy):
            return None
        # the node order at the start of this gang, as in ``place`` (_keys changes only after it)
        nodes = [k[2] for k in self._keys] if strategy == "SPREAD" else None
        trial: dict[str, Resources] = {}

        def in_order():
            return nodes if nodes is not None else (k[2] for k in self._keys)

        def free(n: str) -> Resources:
            return trial.get(n) or self.get(n)

        def take(n: str, b: Resources) -> None:
            r = trial.get(n)
            if r is None:
                r = trial[n] = dict(self.get(n))
            _take(b, r)

        assignment: list[str] = []
        if strategy == "STRICT_PACK":
            total: Resources = {}
            for b in bundles:
                for k, v in b.items():
                    total[k] = total.get(k, 0.0) + v
            chosen = next((n for n in in_order() if _fits(total, free(n))), None)
            if chosen is None:
                return None
            take(chosen, total)
            assignment = [chosen] * len(bundles)
        else:
            used: dict[str, int] = {}
            for b in bundles:
                if strategy == "STRICT_SPREAD":
                    chosen = next((n for n in in_order() if n not in used and _fits(b, free(n))), None)
                elif strategy == "SPREAD":  # least used first, stable in node order
                    chosen = None
                    for level in sorted({0, *used.values()}):
                        chosen = next((n for n in nodes if used.get(n, 0) == level and _fits(b, free(n))), None)
                        if chosen is not None:
                            break
                else:  # PACK: nodes this gang already uses first
                    chosen = next((n for n in used if _fits(b, free(n))), None)
                    if chosen is None:
                        chosen = next((n for n in in_order() if n not in used and _fits(b, free(n))), None)
                if chosen is None:
                    return None
                take(chosen, b)
                used[chosen] = used.get(chosen, 0) + 1
                assignment.append(chosen)
        for n, r in trial.items():
            self._set(n, r)
        return assignment


def place(bundles: tuple[Resources, ...] | list[Resources], free_by_node: dict[str, Resources],
          strategy: str) -> tuple[list[str], dict[str, Resources]] | None:
    """Return (node per bundle, remaining free) if the gang fits now, else None."""
    view = FreeView(free_by_node)
    assignment = view.place(list(bundles), strategy, shape_of(bundles))
    return None if assignment is None else (assignment, view.snapshot())


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


def queue_order(queue, now: float, aging_s: float) -> list[QueuedJob]:
    """Highest effective priority first (priority + waited_s / aging_s; aging_s 0 = none), FIFO within
    equal. The key is computed for every queued job every pass, so it is written out inline."""
    if aging_s > 0:
        return sorted(queue, key=lambda j: (-(j.priority + (now - j.queued_at if now > j.queued_at else 0.0)
                                              / aging_s), j.queued_at, j.job_id))
    return sorted(queue, key=lambda j: (-j.priority, j.queued_at, j.job_id))


def decide_admission(ctx: AdmissionContext, now: float) -> AdmissionDecision:
    order = queue_order(ctx.queue, now, ctx.aging_s)
    view = FreeView(ctx.free_by_node)
    decision = AdmissionDecision()
    blocked: QueuedJob | None = None
    reserved_msg = ""
    for job in order:
        if decision.reserved_for is not None:
            decision.waiting[job.job_id] = reserved_msg
            continue
        if view.place(job.bundles, job.strategy, job.shape) is not None:
            decision.admit.append(job.job_id)
            continue
        decision.waiting[job.job_id] = "waiting for capacity"
        if blocked is None:
            blocked = job
            if now - job.queued_at >= ctx.starvation_threshold_s:
                decision.reserved_for = job.job_id
                reserved_msg = f"capacity reserved for {job.job_id}"
                decision.waiting[job.job_id] = "waiting for capacity (holds reservation)"
    return decision
