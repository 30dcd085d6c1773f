"""Elastic gangs growing back, a part of the Coordinator's loop (``policy.elastic`` decides).

Owns: nothing durable — which running elastic gangs are below their largest size, and asking the
one move mechanism (``control/evacuation.py``) to grow one: checkpoint now, then placed again
larger (RUNNING → RECOVERING, cause ``elastic_grow``, no restart spent; the loop's start step
places it at the largest size that fits, ``Reconciler._start_step``). Shrinking needs no part: a
gang placed again after a node was lost, preempted or shed starts at the size that fits then.

What it is handed: the placed running gangs (job row, node of each bundle), a job's spec, one
bundle of a gang, the free room a new gang may take, whether a queued job waits for room, and the
moves (to ask one and see those in progress).
"""

from __future__ import annotations

import logging
from typing import Callable

from raycluster import constants as C
from raycluster.policy.elastic import GrowContext, decide_grow, size_that_fits, with_gang_back
from raycluster.policy.evacuation import MoveKind
from raycluster.store.jobs import JobRecord
from raycluster.store.lifecycle import Cause

log = logging.getLogger("raycluster.coordinator")


class Resizes:
    def __init__(self, *, placed_gangs: Callable[[], list[tuple[JobRecord, list[str]]]], spec_of, bundle_of,
                 free: Callable[[], dict[str, dict[str, float]]], queue_waits: Callable[[], bool], evacuations):
        self._placed_gangs, self._spec, self._bundle_of = placed_gangs, spec_of, bundle_of
        self._free, self._queue_waits, self.evacuations = free, queue_waits, evacuations
        self.last_decisions: dict[str, str] = {}  # job -> why it stays (or grows), as last decided

    def tick(self, now: float) -> list[str]:
        """Ask every elastic gang that should grow to checkpoint and be placed again larger; the ids."""
        below = []
        for rec, nodes in self._placed_gangs():
            spec = self._spec(rec)
            if spec.elastic and (rec.world_size or spec.num_workers) < spec.num_workers:
                below.append((rec, spec, nodes))
        ids = {rec.id for rec, _spec, _nodes in below}
        self.last_decisions = {j: why for j, why in self.last_decisions.items() if j in ids}
        if not below:
            return []
        waits, free, grown = self._queue_waits(), None, []
        for rec, spec, nodes in below:
            world = rec.world_size or spec.num_workers
            moving = rec.id in self.evacuations.moves
            fits = None
            running_for_s = now - (rec.attempt_started_at or now)
            if not (moving or waits) and running_for_s >= C.ELASTIC_GROW_INTERVAL_S:
                free = self._free() if free is None else free
                bundle = self._bundle_of(spec)
                fits = size_that_fits(bundle, range(spec.num_workers, world, -1), with_gang_back(free, bundle, nodes),
                                      spec.placement_strategy.value)
            d = decide_grow(GrowContext(rec.id, world, spec.num_workers, running_for_s, moving,
                                        fits, waits), C.ELASTIC_GROW_INTERVAL_S)
            self.last_decisions[rec.id] = d.reason
            if d.to_size is None:
                continue
            if self.evacuations.ask(rec, Cause.ELASTIC_GROW, d.reason, C.ELASTIC_GROW_WAIT_S, MoveKind.RECOVER, now):
                grown.append(rec.id)
                free = None  # (its room is spoken for once it is placed again: read the free view anew)
        return grown
