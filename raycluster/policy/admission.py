"""Admission policy: which queued jobs start now. Pure functions, no Ray.

Owns: gang feasibility (can a set of bundles be placed on per-node free resources under a
placement strategy) and the queue policy.

Policy (documented in the README):
* Order: effective priority, highest first; FIFO (time queued) within equal effective priority.
  Effective priority = priority + waited_s / AGING_S (aging; AGING_S=0 disables it). Aging raises
  every queued job's effective priority at the same rate, so the order never changes with time:
  it is the order of ``priority * AGING_S - queued_at`` (``order_key``), kept across passes by
  ``AdmissionQueue``.
* Gang: a job is admitted only if its whole gang fits on the free resources now.
* Backfill with bounded starvation: when the first job in order does not fit, later (lower
  effective priority) jobs that do fit may start — until that blocked job has waited
  STARVATION_THRESHOLD_S. From then on it holds a *reservation*: nothing behind it starts, so
  running jobs drain until its gang fits. A stream of small jobs can therefore delay a big
  high-priority job by at most the threshold plus the runtime of what is already running.

A pass costs about the number of queued jobs, not jobs x nodes (``FreeView``): nodes are kept in
placement order as placements change them, and a gang of identical bundles that cannot fit is
refused from per-shape capacity counts without a scan. ``AdmissionQueue`` keeps the queue in order
between passes and skips a pass whose inputs (queue, free resources) did not change — the one
decision that time alone can change, a blocked job reaching the starvation threshold, is rechecked
at that instant. The decisions are exactly those of the
straightforward policy (tests/unit/test_admission_property.py; scripts/bench_queue.py).
"""

from __future__ import annotations

import bisect
import math
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
    blocked: str | None = None  # the first job in order that did not fit


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
        self._node_key = {n: (-r.get("GPU", 0.0), -r.get("CPU", 0.0), n) for n, r in free_by_node.items()}
        self._keys = sorted(self._node_key.values())
        # shape -> (bundle's needs, per-node capacity, [sum of capacities, nodes with capacity >= 1])
        self._caps: dict[tuple, tuple[list, dict[str, int], list[int]]] = {}

    def get(self, node: str) -> Resources:
        return self._own.get(node) or self._base[node]

    def snapshot(self) -> dict[str, Resources]:
        return {n: dict(self.get(n)) for n in self._base}

    # ---- bundle capacities ------------------------------------------------------------------------
    @staticmethod
    def _cap(need: list[tuple[str, float]], free: Resources) -> int:
        """How many bundles of these needs fit in ``free`` (an upper bound: a little float slack)."""
        if not need:
            return 1 << 30
        cap = None
        for k, v in need:
            c = int((free.get(k, 0.0) + _EPS) / v + 1e-6)
            if cap is None or c < cap:
                cap = c
        return cap if cap > 0 else 0

    def surely_cannot_fit(self, shape: tuple | None, n: int, strategy: str) -> bool:
        """True only if no placement of ``n`` bundles of ``shape`` exists (so the greedy fails too);
        ``shape`` None (bundles that differ) is never refused here."""
        if shape is None or n == 0:
            return False
        got = self._caps.get(shape)
        if got is None:
            need = [(k, v) for k, v in shape if v > 0]
            per = {node: self._cap(need, self.get(node)) for node in self._base}
            got = self._caps[shape] = (need, per, [sum(per.values()), sum(1 for c in per.values() if c > 0)])
        _need, per, (total, nodes_with_room) = got
        if strategy == "STRICT_SPREAD":
            return nodes_with_room < n
        if strategy == "STRICT_PACK":
            return not any(c >= n for c in per.values()) if nodes_with_room else True
        return total < n

    # ---- taking -----------------------------------------------------------------------------------
    def _set(self, node: str, free: Resources) -> None:
        keys = self._keys
        del keys[bisect.bisect_left(keys, self._node_key[node])]
        key = self._node_key[node] = (-free.get("GPU", 0.0), -free.get("CPU", 0.0), node)
        bisect.insort(keys, key)
        self._own[node] = free
        for need, per, agg in self._caps.values():
            c_old, c_new = per[node], self._cap(need, free)
            if c_old != c_new:
                per[node] = c_new
                agg[0] += c_new - c_old
                agg[1] += (c_new > 0) - (c_old > 0)

    def place(self, bundles, strategy: str, shape: tuple | None = None) -> list[str] | None:
        """Place the gang greedily (exactly as ``place``); take its resources if it fits. ``shape``:
        the gang's one bundle as a key when all its bundles are identical (QueuedJob.shape)."""
        if self.surely_cannot_fit(shape, len(bundles), strategy):
            return None
        # nodes in order at the start of this gang, as in ``place``: _keys changes only after it
        keys, node_key = self._keys, self._node_key
        own, base = self._own, self._base
        trial: dict[str, Resources] = {}

        def fits(b: Resources, n: str) -> bool:
            r = trial.get(n) or own.get(n) or base[n]
            for k, v in b.items():
                if v > 0 and r.get(k, 0.0) + _EPS < v:
                    return False
            return True

        def take(n: str, b: Resources) -> None:
            r = trial.get(n)
            if r is None:
                r = trial[n] = dict(own.get(n) or base[n])
            for k, v in b.items():
                r[k] = r.get(k, 0.0) - v

        assignment: list[str] = []
        if strategy == "STRICT_PACK":
            total: Resources = {}
            for b in bundles:
                for k, v in b.items():
                    total[k] = total.get(k, 0.0) + v
            chosen = next((k[2] for k in keys if fits(total, k[2])), None)
            if chosen is None:
                return None
            take(chosen, total)
            assignment = [chosen] * len(bundles)
        else:
            used: dict[str, int] = {}
            for b in bundles:
                chosen = None
                if strategy == "STRICT_SPREAD":
                    chosen = next((k[2] for k in keys if k[2] not in used and fits(b, k[2])), None)
                elif strategy == "SPREAD":  # least used first, stable in node order
                    for level in sorted({0, *used.values()}):
                        chosen = next((k[2] for k in keys if used.get(k[2], 0) == level and fits(b, k[2])), None)
                        if chosen is not None:
                            break
                else:  # PACK: nodes this gang already uses first, in node order
                    # (identical bundles: only the last node used can still fit one, order is moot)
                    in_use = used if len(used) < 2 or shape is not None else sorted(used, key=node_key.__getitem__)
                    chosen = next((n for n in in_use if fits(b, n)), None)
                    if chosen is None:
                        chosen = next((k[2] for k in keys if k[2] not in used and fits(b, k[2])), None)
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


def order_key(job: QueuedJob, aging_s: float) -> tuple:
    """A job's place in the queue: highest effective priority first, FIFO within equal, job id last.

    Effective priority ``priority + (now - queued_at) / aging_s`` orders jobs like
    ``priority * aging_s - queued_at`` at every ``now``, so the key holds no time and the order is
    kept across passes."""
    if aging_s > 0:
        return (job.queued_at - job.priority * aging_s, job.queued_at, job.job_id)
    return (-job.priority, job.queued_at, job.job_id)


def queue_order(queue, aging_s: float) -> list[QueuedJob]:
    return sorted(queue, key=lambda j: order_key(j, aging_s))


def decide_admission(ctx: AdmissionContext, now: float, ordered: list[QueuedJob] | None = None) -> AdmissionDecision:
    """Which queued jobs start now. ``ordered``: ``ctx.queue`` already in ``queue_order`` (as
    ``AdmissionQueue`` keeps it), so the pass does not sort."""
    order = ordered if ordered is not None else queue_order(ctx.queue, ctx.aging_s)
    view = FreeView(ctx.free_by_node)
    decision = AdmissionDecision()
    waiting = decision.waiting
    for i, job in enumerate(order):
        # (a gang of identical bundles that cannot fit is refused in O(1) by the view's capacity counts)
        if view.place(job.bundles, job.strategy, job.shape) is not None:
            decision.admit.append(job.job_id)
            continue
        waiting[job.job_id] = "waiting for capacity"
        if decision.blocked is None:
            decision.blocked = job.job_id
            if now - job.queued_at >= ctx.starvation_threshold_s:
                # a reservation: nothing behind the blocked job starts
                decision.reserved_for = job.job_id
                waiting[job.job_id] = "waiting for capacity (holds reservation)"
                waiting.update(dict.fromkeys([j.job_id for j in order[i + 1:]],
                                             f"capacity reserved for {job.job_id}"))
                break
    return decision


class AdmissionQueue:
    """The queued jobs, kept in admission order between passes, and the inputs of the last pass.

    ``put``/``discard`` keep the order (a sorted list of ``order_key``: O(log n) to find, a memmove
    to insert). ``decide`` runs ``decide_admission`` unless nothing it depends on changed since
    the last pass that admitted nothing: the same queue (``version``), the same free resources, and
    ``now`` before the instant the blocked job reaches the starvation threshold. Pure: no Ray, no I/O.
    """

    def __init__(self, starvation_threshold_s: float, aging_s: float):
        self.starvation_threshold_s = starvation_threshold_s
        self.aging_s = aging_s
        self._jobs: dict[str, QueuedJob] = {}
        self._keys: list[tuple] = []
        self._ordered: list[QueuedJob] | None = None
        self.version = 0
        self._last: tuple[int, dict, float] | None = None  # (version, free, recheck at)
        self.passes = self.skipped = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._jobs

    def get(self, job_id: str) -> QueuedJob | None:
        return self._jobs.get(job_id)

    def put(self, job: QueuedJob) -> None:
        old = self._jobs.get(job.job_id)
        if old == job:
            return
        if old is not None:
            self._remove_key(old)
        bisect.insort(self._keys, order_key(job, self.aging_s))
        self._jobs[job.job_id] = job
        self._changed()

    def discard(self, job_id: str) -> None:
        old = self._jobs.pop(job_id, None)
        if old is not None:
            self._remove_key(old)
            self._changed()

    def _remove_key(self, job: QueuedJob) -> None:
        key = order_key(job, self.aging_s)
        del self._keys[bisect.bisect_left(self._keys, key)]

    def _changed(self) -> None:
        self.version += 1
        self._ordered = None

    def configure(self, starvation_threshold_s: float, aging_s: float) -> None:
        """Change the knobs (constants read each pass, so an override applies at once)."""
        if starvation_threshold_s != self.starvation_threshold_s:
            self.starvation_threshold_s = starvation_threshold_s
            self._last = None
        if aging_s != self.aging_s:
            self.aging_s = aging_s
            self._keys = sorted(order_key(j, aging_s) for j in self._jobs.values())
            self._changed()

    def forget(self) -> None:
        """Decide again at the next pass (what the last decision asked for was not all carried out)."""
        self._last = None

    def ordered(self) -> list[QueuedJob]:
        if self._ordered is None:
            jobs = self._jobs
            self._ordered = [jobs[k[-1]] for k in self._keys]
        return self._ordered

    def decide(self, free_by_node: dict[str, Resources], now: float) -> AdmissionDecision | None:
        """The admission decision, or None when it would be the last one again."""
        last = self._last
        if last is not None and last[0] == self.version and now < last[2] and last[1] == free_by_node:
            self.skipped += 1
            return None
        order = self.ordered()
        ctx = AdmissionContext(tuple(order), free_by_node, self.starvation_threshold_s, self.aging_s)
        decision = decide_admission(ctx, now, ordered=order)
        self.passes += 1
        if decision.admit:  # the queue changes once they start; until then decide again each pass
            self._last = None
        else:
            recheck_at = math.inf
            if decision.blocked is not None and decision.reserved_for is None:
                recheck_at = self._jobs[decision.blocked].queued_at + self.starvation_threshold_s
            self._last = (self.version, {n: dict(r) for n, r in free_by_node.items()}, recheck_at)
        return decision
