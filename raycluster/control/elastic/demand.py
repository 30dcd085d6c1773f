"""The demand an elastic cluster's Coordinator tells Ray's autoscaler: ``Demand``, a part of the loop
with its own state (the demand last told), handed only Ray's ``request_resources``.

Queued gangs are visible to Ray's autoscaler only through us (a placement group is made once a gang
fits): the loop hands it the bundles of every running gang and of the queued ones in queue order
(at most ``DEMAND_MAX_BUNDLES``; an elastic one at its smallest size), each queued one with whether
it may be rented for; it tells Ray
only when what it depends on changed, and nothing left clears the request, so idle rented nodes
are released.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from raycluster import constants as C
from raycluster.policy.tenants import held_by_quota


class Demand:
    def __init__(self, request_resources: Callable[[list[dict[str, float]]], None]):
        self._request = request_resources
        self._key: tuple | None = None

    def tell(self, key: tuple, running: Callable[[], Iterable[list[dict[str, float]]]],
             queued: Callable[[], Iterable[tuple[list[dict[str, float]], bool]]]) -> bool:
        """Tell Ray's autoscaler the bundles of ``running()`` gangs and of the ``queued()`` ones that
        may be rented for (``(bundles, wanted)`` in queue order; read only as far as the cap), unless
        ``key`` — the versions of what they come from — is the one last told. True if it told."""
        if key == self._key:
            return False
        bundles = [b for gang in running() for b in gang]
        for gang, wanted in queued():
            if len(bundles) >= C.DEMAND_MAX_BUNDLES:
                break
            if wanted:
                bundles.extend(gang)
        self._request(bundles[:C.DEMAND_MAX_BUNDLES])
        self._key = key
        return True


def gangs_for_demand(active: dict[str, Any], attempts: dict[str, Any], pending: dict[str, Any], queue,
                     held_back: dict[str, str], bundles_of: Callable[[Any], list[dict[str, float]]]):
    """(running, queued) for ``Demand.tell``, from the loop's view: every running gang (less one being
    placed again that the BudgetAutoscaler rents nothing for), then the queued ones in queue order —
    not one the BudgetAutoscaler rents nothing for (Ray meets a resource request whole or not at
    all: one such gang would hold back every other), nor one its tenant's quota holds back (it would
    not start on a new node either)."""

    def running():
        for rec in active.values():
            att = attempts.get(rec.id)
            if not (rec.id in held_back and (att is None or not att.placed)):
                yield bundles_of(rec)

    def queued():
        for job in queue.ordered():
            rec = pending.get(job.job_id)
            # an elastic gang at its smallest: what the BudgetAutoscaler rents for (Ray meets a request
            # whole or not at all: its largest could be more than may be rented, holding back everything)
            bundles = job.bundles if job.min_bundles is None else job.bundles[:job.min_bundles]
            yield bundles, job.job_id not in held_back and not (rec is not None and held_by_quota(rec.waiting))

    return running, queued
