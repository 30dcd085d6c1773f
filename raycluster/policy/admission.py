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

A pass costs about the jobs it admits plus the number of *lanes*, not the queue's length nor
jobs x nodes: queued gangs of the same number of identical bundles under the same strategy form a
lane, merged in queue order, and a lane is dropped at its first refusal (free resources only shrink
during a pass, so nothing later in it can fit); nodes are kept in buckets of equal free GPUs/CPUs in
placement order (``FreeView``), so a gang is placed or refused after a look at a few buckets.
``AdmissionQueue`` keeps the queue and its lanes in order between passes and skips a pass whose
inputs (queue, free resources) did not change — the one decision that time alone can change, a
blocked job reaching the starvation threshold, is rechecked at that instant. Every job not admitted
waits for a reason shared by many (``AdmissionDecision.groups``). The decisions are exactly those of the
straightforward policy (tests/unit/test_admission_property.py; scripts/bench_queue.py).
"""

from __future__ import annotations

import bisect
import heapq
import math
import operator
from dataclasses import dataclass, field

from raycluster.policy.placement import FreeView, Resources, shape_of
from raycluster.policy.tenants import Demand, QuotaView


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    priority: int
    queued_at: float
    bundles: tuple[Resources, ...]
    strategy: str = "PACK"
    tenant: str | None = None
    # fair share: ordered as if queued this many seconds earlier (``policy.tenants.boost_s``)
    boost_s: float = 0.0
    # an elastic gang (``num_workers: {min, max}``): it may start with this many of its bundles or
    # more (None: all of them). Such a gang is tried on its own, at the largest size that fits.
    min_bundles: int | None = None
    # the one bundle of a gang of identical bundles, as a hashable key (None: bundles differ)
    shape: tuple | None = field(init=False, compare=False, repr=False, default=None)
    # Its lane: gangs of the same number of identical bundles under the same strategy (None: a gang
    # of differing bundles, tried on its own). Free resources only shrink during a pass, and how many
    # identical bundles a node can take shrinks with them, so once a gang does not fit, no later gang
    # of its lane fits in that pass. (A str, so its hash is computed once.)
    lane: str | None = field(init=False, compare=False, repr=False, default=None)

    def __post_init__(self):
        shape = shape_of(self.bundles)
        object.__setattr__(self, "shape", shape)
        if shape is not None and self.min_bundles is None:
            object.__setattr__(self, "lane", f"{self.tenant}/{self.strategy}/{len(self.bundles)}/{shape}")

@dataclass(frozen=True)
class AdmissionContext:
    queue: tuple[QueuedJob, ...]
    free_by_node: dict[str, Resources]
    starvation_threshold_s: float
    aging_s: float


WAITING = "waiting for capacity"
HOLDS_RESERVATION = "waiting for capacity (holds reservation)"


def reserved_reason(job_id: str) -> str:
    return f"capacity reserved for {job_id}"


@dataclass
class AdmissionDecision:
    """What a pass decided. Every queued job not admitted waits, for the reason given by
    ``waiting_groups`` (reason, job ids), built once per pass; ``waiting`` is the same as a dict."""
    admit: list[str] = field(default_factory=list)
    placements: dict[str, list[str]] = field(default_factory=dict, repr=False)  # job -> node of each bundle
    sizes: dict[str, int] = field(default_factory=dict)  # an elastic gang admitted: the bundles it starts with
    reserved_for: str | None = None
    blocked: str | None = None  # the first job in order that did not fit
    groups: list[tuple[str, list[str]]] = field(default_factory=list, repr=False)

    @property
    def waiting(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for why, ids in self.groups:
            out.update(dict.fromkeys(ids, why))
        return out


def order_key(job: QueuedJob, aging_s: float) -> tuple:
    """A job's place in the queue: highest effective priority first, FIFO within equal, job id last.

    Effective priority ``priority + (now - queued_at) / aging_s`` orders jobs like
    ``priority * aging_s - queued_at`` at every ``now``, so the key holds no time and the order is
    kept across passes."""
    at = job.queued_at - job.boost_s
    if aging_s > 0:
        return (at - job.priority * aging_s, at, job.job_id)
    return (-job.priority, at, job.job_id)


def queue_order(queue, aging_s: float) -> list[QueuedJob]:
    return sorted(queue, key=lambda j: order_key(j, aging_s))


def _decide(keys: list[tuple], lanes, jobs: dict[str, QueuedJob], free_by_node: dict[str, Resources],
            now: float, starvation_threshold_s: float, quota: QuotaView | None = None) -> AdmissionDecision:
    """One pass: the lanes' jobs merged in queue order (``keys``: every job's ``order_key``,
    sorted; ``lanes``: (lane, its jobs' keys sorted)). A lane is dropped at its first refusal, so a
    pass costs about the jobs admitted plus the number of lanes, not the queue's length.

    ``quota``: a job its tenant's quota refuses waits for that reason and is not "blocked" (it
    reserves nothing); a lane (one tenant's identical gangs) is dropped at its first such refusal."""
    view = FreeView(free_by_node)
    decision = AdmissionDecision()
    admit = decision.admit
    heap = [(ks[0], i, 0) for i, (_lane, ks) in enumerate(lanes) if ks]
    heapq.heapify(heap)
    regular = [lane is not None for lane, _ks in lanes]
    blocked_key, admitted_keys = None, []
    over_quota: list[tuple[str, list[str]]] = []
    while heap:
        key, i, pos = heap[0]
        job = jobs[key[-1]]
        if job.min_bundles is not None:
            size, assignment, demand, why = _place_elastic(job, view, quota)
        elif quota is not None:
            demand = Demand.of_bundles(job.bundles)
            why = quota.refuse(job.tenant, demand)
        else:
            why = None
        if why is not None:
            ks = lanes[i][1]
            if regular[i]:  # every later gang of the lane is this tenant's and the same: refused too
                over_quota.append((why, [k[-1] for k in ks[pos:]]))
                heapq.heappop(heap)
            else:
                over_quota.append((why, [job.job_id]))
                if pos + 1 < len(ks):
                    heapq.heapreplace(heap, (ks[pos + 1], i, pos + 1))
                else:
                    heapq.heappop(heap)
            continue
        if job.min_bundles is None:
            assignment = view.place(job.bundles, job.strategy, job.shape)
        elif assignment is not None:
            decision.sizes[job.job_id] = size
        placed = assignment is not None
        if placed:
            admit.append(job.job_id)
            decision.placements[job.job_id] = assignment
            admitted_keys.append(key)
            if quota is not None:
                quota.take(job.tenant, demand)
        elif blocked_key is None:
            blocked_key, decision.blocked = key, job.job_id
            if now - job.queued_at >= starvation_threshold_s:
                decision.reserved_for = job.job_id  # a reservation: nothing behind the blocked job starts
                break
        ks = lanes[i][1]
        if (placed or not regular[i]) and pos + 1 < len(ks):
            heapq.heapreplace(heap, (ks[pos + 1], i, pos + 1))
        else:
            heapq.heappop(heap)
    if blocked_key is not None:
        at = bisect.bisect_left(keys, blocked_key)
        if decision.reserved_for is not None:
            decision.groups = [(HOLDS_RESERVATION, [decision.blocked]),
                               (reserved_reason(decision.blocked), _ids(keys, at + 1, len(keys), ()))]
        else:  # every job before the first refused one was admitted
            later = [bisect.bisect_left(keys, k) for k in admitted_keys if k > blocked_key]
            decision.groups = [(WAITING, _ids(keys, at, len(keys), later))]
    if over_quota:
        by_reason: dict[str, list[str]] = {}
        for why, ids in over_quota:
            by_reason.setdefault(why, []).extend(ids)
        refused = {j for ids in by_reason.values() for j in ids}
        decision.groups = [(why, [j for j in ids if j not in refused]) for why, ids in decision.groups]
        decision.groups += list(by_reason.items())
    return decision


def _place_elastic(job: QueuedJob, view: FreeView, quota: QuotaView | None):
    """An elastic gang at the largest size from all its bundles down to ``min_bundles`` that its
    tenant's quota allows and the free view holds: (size, assignment, demand, None); (None, None,
    None, why) when the quota refuses even the smallest; assignment None when none fits."""
    why = None
    for n in range(len(job.bundles), job.min_bundles - 1, -1):
        bundles = job.bundles[:n]
        demand = Demand.of_bundles(bundles)
        if quota is not None:
            refused = quota.refuse(job.tenant, demand)
            if refused is not None:
                why = why or refused
                continue
        why = None
        assignment = view.place(bundles, job.strategy, shape_of(bundles))
        if assignment is not None:
            return n, assignment, demand, None
    if why is not None:
        return None, None, None, why
    return None, None, Demand.of_bundles(job.bundles[:job.min_bundles]), None


_job_id_of = operator.itemgetter(-1)


def _ids(keys: list[tuple], start: int, stop: int, skip) -> list[str]:
    """The job ids of ``keys[start:stop]`` but those at the positions ``skip`` (sorted)."""
    out: list[str] = []
    for pos in skip:
        out.extend(map(_job_id_of, keys[start:pos]))
        start = pos + 1
    out.extend(map(_job_id_of, keys[start:stop]))
    return out


def decide_admission(ctx: AdmissionContext, now: float, quota: QuotaView | None = None) -> AdmissionDecision:
    """Which queued jobs start now (from scratch; ``AdmissionQueue`` keeps the order between passes)."""
    jobs = {j.job_id: j for j in ctx.queue}
    keys = sorted(order_key(j, ctx.aging_s) for j in ctx.queue)
    lanes: dict[str | None, list[tuple]] = {}
    for k in keys:
        lanes.setdefault(jobs[k[-1]].lane, []).append(k)
    return _decide(keys, list(lanes.items()), jobs, ctx.free_by_node, now, ctx.starvation_threshold_s, quota)


class AdmissionQueue:
    """The queued jobs, kept in admission order between passes, and the inputs of the last pass.

    ``put``/``discard`` keep the order and the lanes (sorted lists of ``order_key``: O(log n) to
    find, a memmove to insert). ``decide`` runs the pass unless nothing it depends on changed since
    the last pass that admitted nothing: the same queue (``version``), the same free resources, and
    ``now`` before the instant the blocked job reaches the starvation threshold. Pure: no Ray, no I/O.
    """

    def __init__(self, starvation_threshold_s: float, aging_s: float):
        self.starvation_threshold_s = starvation_threshold_s
        self.aging_s = aging_s
        self._jobs: dict[str, QueuedJob] = {}
        self._keys: list[tuple] = []
        self._lanes: dict[str | None, list[tuple]] = {}
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
        key = order_key(job, self.aging_s)
        bisect.insort(self._keys, key)
        bisect.insort(self._lanes.setdefault(job.lane, []), key)
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
        lane_key = job.lane
        lane = self._lanes[lane_key]
        del lane[bisect.bisect_left(lane, key)]
        if not lane:
            del self._lanes[lane_key]

    def _changed(self) -> None:
        self.version += 1

    def configure(self, starvation_threshold_s: float, aging_s: float) -> None:
        """Change the knobs (constants read each pass, so an override applies at once)."""
        if starvation_threshold_s != self.starvation_threshold_s:
            self.starvation_threshold_s = starvation_threshold_s
            self._last = None
        if aging_s != self.aging_s:
            self.aging_s = aging_s
            jobs = list(self._jobs.values())
            self._jobs, self._keys, self._lanes = {}, [], {}
            for job in jobs:
                self.put(job)
            self._changed()

    def forget(self) -> None:
        """Decide again at the next pass (what the last decision asked for was not all carried out)."""
        self._last = None

    def ordered(self) -> list[QueuedJob]:
        jobs = self._jobs
        return [jobs[k[-1]] for k in self._keys]

    def decide(self, free_by_node: dict[str, Resources], now: float,
               quota: QuotaView | None = None) -> AdmissionDecision | None:
        """The admission decision, or None when it would be the last one again (a change of the
        quotas or of what tenants hold must ``forget`` the last pass)."""
        last = self._last
        if last is not None and last[0] == self.version and now < last[2] and last[1] == free_by_node:
            self.skipped += 1
            return None
        decision = _decide(self._keys, list(self._lanes.items()), self._jobs, free_by_node, now,
                           self.starvation_threshold_s, quota)
        self.passes += 1
        if decision.admit:  # the queue changes once they start; until then decide again each pass
            self._last = None
        else:
            recheck_at = math.inf
            if decision.blocked is not None and decision.reserved_for is None:
                recheck_at = self._jobs[decision.blocked].queued_at + self.starvation_threshold_s
            self._last = (self.version, {n: dict(r) for n, r in free_by_node.items()}, recheck_at)
        return decision


class WaitingIndex:
    """The pending jobs by their stored waiting reason, so that the reasons a pass gives (the same
    for thousands of jobs) are compared with the stored ones as set differences, not job by job."""

    def __init__(self):
        self._by_reason: dict[str, set[str]] = {}

    def move(self, job_id: str, old: str | None, new: str | None) -> None:
        if old == new:
            return
        if old is not None and (have := self._by_reason.get(old)) is not None:
            have.discard(job_id)
            if not have:
                del self._by_reason[old]
        if new is not None:
            self._by_reason.setdefault(new, set()).add(job_id)

    def changed(self, groups: list[tuple[str, list[str]]]) -> dict[str, str]:
        """The jobs of ``groups`` (reason, job ids) whose stored reason is another, with the new one."""
        out: dict[str, str] = {}
        for why, ids in groups:
            have = self._by_reason.get(why)
            out.update(dict.fromkeys(ids if have is None else set(ids).difference(have), why))
        return out
