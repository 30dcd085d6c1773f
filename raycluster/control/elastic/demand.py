"""The demand an elastic cluster's Coordinator tells Ray's autoscaler (a mixin of the Reconciler):
the bundles of every running and queued gang it may rent for, whenever they change."""

from __future__ import annotations

from raycluster import constants as C
from raycluster.policy.tenants import held_by_quota


class DemandMixin:
    def _tell_demand(self) -> None:
        """Queued gangs are visible to Ray's autoscaler only through us (a placement group is made
        once a gang fits): tell it the bundles of every running and queued gang (at most
        DEMAND_MAX_BUNDLES, in queue order) whenever they change; nothing left clears the request,
        so idle rented nodes are released."""
        key = (self.queue.version, frozenset(self._active), self.budget_version, self._waiting_version)
        if key == self._demand_key:
            return
        bundles: list[dict[str, float]] = []
        held_back = self.budget_reasons
        for rec in self._active.values():
            att = self.attempts.get(rec.id)
            if rec.id in held_back and (att is None or not att.placed):
                continue  # being placed again, but the BudgetAutoscaler rents nothing for it now
            bundles.extend(self._bundles(self._spec(rec)))
        for job in self.queue.ordered():
            if len(bundles) >= C.DEMAND_MAX_BUNDLES:
                break
            # a gang the BudgetAutoscaler rents nothing for is not asked for: Ray's autoscaler meets
            # a resource request whole or not at all, so one such gang would hold back every other;
            # nor is one its tenant's quota holds back (it would not start on a new node either)
            rec = self._pending.get(job.job_id)
            if job.job_id not in held_back and not (rec is not None and held_by_quota(rec.waiting)):
                bundles.extend(job.bundles)
        self.ops.request_resources(bundles[:C.DEMAND_MAX_BUNDLES])
        self._demand_key = key
