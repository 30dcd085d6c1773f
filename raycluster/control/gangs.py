"""The gangs the Coordinator runs: one attempt per active job — its placement group and one rank
task per gang member — and the mechanics of starting, re-placing and tearing one down.

Owns (in memory; rebuilt after a restart from the placement groups' names, ``ensure_launched``):
``Attempt`` per active job, when a gang's placement group was last removed (``freed_at``: Ray's free
view shows freed room some ms later), and when each attempt's rank 0 started (``rank_started``:
a gang's rented nodes are charged from then). Ranks are submitted into the placement group at once:
Ray starts them the moment it is placed, with no loop round trip; never half a gang.

What it is handed: the Ray wrapper (``GangOps``), a job's spec and bundles, a sweep's first ranks,
the usage ledger and the node table (charged from placement), what every rank is launched with.
Deciding *when* is the loop's (``control/reconcile.py``) and the policies'.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from raycluster import constants as C
from raycluster.control.elastic.ledger import JobLedger
from raycluster.control.rayops import GangOps, pg_name
from raycluster.control.sweeps import Sweeps
from raycluster.policy.recovery import RankStatus
from raycluster.spec import JobSpec
from raycluster.store.jobs import JobRecord
from raycluster.store.lifecycle import JobState

log = logging.getLogger("raycluster.coordinator")


def world_of(job: JobRecord, spec: JobSpec) -> int:
    """The gang size of the job's current attempt (an elastic gang's is on its row; else its spec's)."""
    return job.world_size or spec.num_workers


def spot_of(job: JobRecord, spec: JobSpec) -> str:
    """The spot choice of the job's current attempt: its row's ``attempt_spot`` while it holds one
    (``only`` after a spot return), else its spec's — a queued job's too (a placement that timed
    out left the row's value behind; its next START sets it again)."""
    return (job.state != JobState.PENDING and job.attempt_spot) or spec.spot


@dataclass
class Attempt:
    job_id: str
    attempt: int
    pg: Any
    placing_since: float
    refs: list | None = None
    placed: bool = False  # the placement group is created (its resources show as used)
    nodes: list | None = None  # the node of each bundle, once placed
    first_failure_at: float | None = None
    excluded: frozenset = frozenset()  # the nodes its placement group keeps off (as when it was made)


class Gangs:
    def __init__(self, ops: GangOps, *, spec_of: Callable[[JobRecord], JobSpec],
                 bundles_of: Callable[[JobSpec, int | None, str | None], list[dict[str, float]]],
                 first_ranks: Callable[[str, JobSpec, int], range], ledger: JobLedger, nodes,
                 launch_with: dict[str, Any], clock: Callable[[], float], wake: Callable[[], None],
                 guard: Callable[..., bool]):
        self.ops = ops
        self._spec, self._bundles, self._first_ranks = spec_of, bundles_of, first_ranks
        self.ledger, self.nodes = ledger, nodes
        self._launch_with = launch_with  # checkpoint root, log dir, the CheckpointManager and Coordinator handles
        self.clock, self.wake, self._guard = clock, wake, guard
        self.attempts: dict[str, Attempt] = {}
        self.freed_at = float("-inf")
        self._rank_started: dict[tuple[str, int], float] = {}  # (job, attempt) -> when its rank 0 started

    def _of_attempt(self, job: JobRecord, spec: JobSpec) -> list[dict[str, float]]:
        """The bundles of the job's current attempt: its size and spot choice."""
        return self._bundles(spec, world_of(job, spec), spot_of(job, spec))

    def rank_started(self, job_id: str, attempt: int) -> None:
        self._rank_started.setdefault((job_id, int(attempt)), self.clock())

    def start(self, job: JobRecord, excluded: frozenset, now: float) -> Attempt:
        """A new attempt (``job.attempt``, just committed): its placement group and ranks."""
        spec = self._spec(job)
        pg = self.ops.create_pg(pg_name(job.id, job.attempt), self._of_attempt(job, spec),
                                spec.placement_strategy.value, sorted(excluded))
        att = self.attempts[job.id] = Attempt(job.id, job.attempt, pg, placing_since=now, excluded=excluded)
        self.launch(job, att)
        return att

    def ensure_launched(self, job: JobRecord, excluded: frozenset, now: float) -> Attempt:
        """A PLACING job's attempt with its ranks submitted. If this Coordinator holds nothing of it
        (it restarted: the ranks died with the previous one), reuse the attempt's named placement
        group (or create it); if an earlier launch failed, launch again (raises if it fails again)."""
        att = self.attempts.get(job.id)
        if att is None:
            spec = self._spec(job)
            name = pg_name(job.id, job.attempt)
            pg = self.ops.get_pg(name) or self.ops.create_pg(name, self._of_attempt(job, spec),
                                                             spec.placement_strategy.value, sorted(excluded))
            att = self.attempts[job.id] = Attempt(job.id, job.attempt, pg, placing_since=now, excluded=excluded)
        if att.refs is None:
            self.launch(job, att)
        return att

    def replace_pg(self, job: JobRecord, att: Attempt, excluded: frozenset, now: float) -> None:
        """The nodes to keep off changed while the gang waits to be placed (a node healthy again,
        undrained, or newly excluded): its placement group is made again with the exclusion of now,
        under the same name, and its ranks launched into it."""
        log.info("%s: the excluded nodes changed while it was being placed: placement group made again", job.id)
        if att.refs:
            self.ops.cancel(att.refs)
        self.ops.remove_pg(att.pg)
        spec = self._spec(job)
        att.excluded = excluded
        att.pg = self.ops.create_pg(pg_name(job.id, att.attempt), self._of_attempt(job, spec),
                                    spec.placement_strategy.value, sorted(att.excluded))
        att.refs, att.placing_since = None, now
        self.launch(job, att)

    def placed(self, job: JobRecord, now: float) -> Attempt:
        """The gang is placed: its nodes noted; on an elastic cluster its rented nodes are charged
        from its rank 0's start (a short job may be done before the loop saw it placed)."""
        att = self.attempts[job.id]
        att.placed = True
        self._guard(f"nodes of {job.id}", self._note_nodes, att)
        since = min(now, self._rank_started.pop((job.id, att.attempt), now))
        if self.ledger.elastic:
            self._guard(f"usage of {job.id}", self._record_usage, job, att, since)
        return att

    def end(self, job_id: str) -> Attempt | None:
        """The attempt is over (or the job left): tear it down."""
        att = self.attempts.pop(job_id, None)
        if att is not None:
            self.teardown(att)
        return att

    def launch(self, job: JobRecord, att: Attempt) -> None:
        """Submit the ranks into the attempt's placement group. (A sweep's bundles are independent: it
        starts one and the others once they pay off, ``control/sweeps.py``.)"""
        att.refs = None
        spec = self._spec(job)
        self.launch_ranks(job, att, range(world_of(job, spec)) if spec.trials is None
                          else self._first_ranks(job.id, spec, att.attempt))

    def launch_ranks(self, job: JobRecord, att: Attempt, ranks: range) -> None:
        spec = self._spec(job)
        bundle = spec.resources.bundle()
        refs: list = []
        try:
            for rank in ranks:
                launch = {
                    "job_id": job.id, "attempt": att.attempt, "rank": rank, "world_size": world_of(job, spec),
                    "elastic": spec.elastic,
                    "entrypoint": spec.entrypoint, "config": spec.config,
                    "checkpoint_policy": spec.checkpoint.model_dump(), "sweep": Sweeps.launch_of(spec),
                    **self._launch_with,
                }
                refs.append(self.ops.launch_rank(att.pg, rank, bundle, launch, spec.runtime_env,
                                                 f"{spec.name}:{job.id}:a{att.attempt}:r{rank}"))
        except BaseException:
            self.ops.cancel(refs)
            raise
        att.refs = (att.refs or []) + refs
        self.ops.watch(refs, self.wake)

    def teardown(self, att: Attempt) -> None:
        self._rank_started.pop((att.job_id, att.attempt), None)
        if att.placed:
            self._guard(f"usage of {att.job_id}", self.ledger.ended, att.job_id, att.attempt, self.clock())
        if att.refs:
            pending = [ref for ref, r in zip(att.refs, self.ops.poll(att.refs)) if r.status == RankStatus.RUNNING]
            self.ops.cancel(pending)
        self.ops.remove_pg(att.pg)
        self.freed_at = self.clock()  # Ray's free view shows it some ms later: look again soon

    def _note_nodes(self, att: Attempt) -> None:
        att.nodes = self.ops.pg_nodes(att.pg)

    def _record_usage(self, job: JobRecord, att: Attempt, now: float) -> None:
        spec = self._spec(job)
        bundle_nodes = self.ops.pg_nodes(att.pg)
        nodes = self.nodes.nodes(C.NODE_TOTALS_TTL_S)
        if not set(bundle_nodes) <= {n["id"] for n in nodes}:  # a node that joined since the list was read:
            nodes = self.nodes.nodes(0.0)  # its rental was not found and the job went unbilled
        self.ledger.placed(job.id, att.attempt, bundle_nodes, spec.resources.bundle(), nodes, now)
