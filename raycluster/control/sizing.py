"""A gang's shape and size, as the Coordinator's loop and its parts ask for it.

Owns the rules (nothing durable): a job's bundles at a size — on an elastic (renting) cluster a
``spot: only/never`` gang's bundles ask for its kind's marker resource (``policy.budget.with_kind``)
—, the bundles a job's gang holds (its current attempt's size; its largest while queued), the free
room a new gang may take now (unhealthy and drained nodes left out; placement groups not created
yet, which Ray's free view does not show, counted as taken) and the size an elastic gang placed
again starts at (``policy.elastic.size_that_fits`` over that room, else its smallest).

What it is handed, read when asked: a job's parsed spec, whether the cluster rents its nodes, the
node cache, the excluded nodes, the attempts and the active job rows. (Also: whether a gang would
fit elsewhere, for node health's moves.)
"""

from __future__ import annotations

from typing import Any, Callable

from raycluster import constants as C
from raycluster.control.gangs import spot_of, world_of
from raycluster.policy.budget import with_kind
from raycluster.policy.elastic import size_that_fits
from raycluster.policy.placement import place
from raycluster.policy.steps import next_attempt_spot
from raycluster.spec import JobSpec
from raycluster.store.jobs import JobRecord
from raycluster.store.lifecycle import JobState


class GangSizing:
    def __init__(self, *, spec_of: Callable[[JobRecord], JobSpec], rented: bool, nodes,
                 excluded: Callable[[], set[str]], attempts: Callable[[], dict[str, Any]],
                 active: Callable[[], dict[str, JobRecord]]):
        self._spec, self._rented, self._nodes = spec_of, rented, nodes
        self._excluded, self._attempts, self._active = excluded, attempts, active

    def bundles(self, spec: JobSpec, workers: int | None = None, spot: str | None = None) -> list[dict[str, float]]:
        """The bundles of a gang of ``workers`` (default: its largest), of the spot choice ``spot``
        (default: its spec's; an attempt's own, ``JobRecord.attempt_spot``)."""
        bundles = spec.bundles(workers)
        return with_kind(bundles, spot or spec.spot) if self._rented else bundles

    def held(self, rec: JobRecord) -> list[dict[str, float]]:
        """The bundles of a job's gang as it holds them: its current attempt's size (an elastic gang's
        varies) and spot choice, its largest while it is queued."""
        spec = self._spec(rec)
        if rec.state == JobState.PENDING:
            return self.bundles(spec)
        return self.bundles(spec, world_of(rec, spec), spot_of(rec, spec))

    def free_for_new_gangs(self, max_age_s: float = 0.0) -> dict[str, dict[str, float]]:
        """The free room a new gang may take now."""
        _total, free = self._nodes.totals_and_free(max_age_s)
        excluded = self._excluded()
        if excluded:  # unhealthy and drained nodes take no new gang
            free = {n: r for n, r in free.items() if n not in excluded}
        active = self._active()
        for att in self._attempts().values():
            if not att.placed and (rec := active.get(att.job_id)) is not None:
                placed = place(self.held(rec), free, self._spec(rec).placement_strategy.value)
                if placed:
                    free = placed[1]
        return free

    def room_elsewhere(self, spec: JobSpec, excluded: set[str]) -> bool:
        """Whether the gang (an elastic one at its smallest) would fit now on the free room of the
        nodes that are not ``excluded``."""
        _total, free = self._nodes.totals_and_free(C.NODE_TOTALS_TTL_S)
        free = {n: r for n, r in free.items() if n not in excluded}
        return place(self.bundles(spec, spec.min_workers), free, spec.placement_strategy.value) is not None

    def start_size(self, job: JobRecord) -> int:
        """The size a job is placed again at: a rigid gang's own; an elastic one the largest that fits
        the free room now, else its smallest (it waits to be placed at that) — it shrinks instead of
        waiting for a replacement node."""
        spec = self._spec(job)
        if not spec.elastic:
            return spec.num_workers
        bundle = self.bundles(spec, 1, next_attempt_spot(job))[0]
        return (size_that_fits(bundle, spec.sizes(), self.free_for_new_gangs(),
                               spec.placement_strategy.value) or spec.min_workers)
