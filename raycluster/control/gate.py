"""The submit gate: every check a spec must pass before a job or a schedule is stored, in one place.

Owns: ``SubmitGate.check`` — in this order, each refusal typed and naming the spec field: the
tenant's per-job limits (the tenants file: ``InvalidJobSpec``), the entrypoint (``RayOps
.check_entrypoint``: read from the job's package, else imported once on a worker;
``EntrypointImportError``; a success is cached ``ENTRYPOINT_CHECK_CACHE_S`` per entrypoint and
runtime_env), and whether the gang can ever be placed (``InfeasibleJob``, refused only on the node
table read at that moment, not a cached one): on the largest cluster it may have (the fixed nodes
plus every node the autoscaler may rent for its ``spot`` choice), and, when it needs rented nodes,
at its spot choice's price within the hourly cap in force (``over_budget``; the cap read live, at
most once a second). Submit, batch submit and schedule creation all pass here; it holds its own
caches and is handed what it reads (Ray seam, node cache, tenants, the elastic cluster's shape).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

from raycluster import constants as C
from raycluster.control.nodes import totals_and_free
from raycluster.errors import EntrypointImportError, InfeasibleJob, InvalidJobSpec
from raycluster.labels import RENTAL_LABEL
from raycluster.policy.budget import Gang, cheapest_gang_usd_per_hour
from raycluster.policy.placement import infeasible_reason
from raycluster.policy.tenants import check_job_limits
from raycluster.provision import spend
from raycluster.spec import JobSpec
from raycluster.util.ttlcache import TTLCache

log = logging.getLogger("raycluster.coordinator")


def over_budget(spec: JobSpec, types, cap_usd_per_hour: float) -> str | None:
    """Why the gang can never run within the hourly cap (None: it can, at least alone): its
    cheapest set of fresh nodes of the kinds its ``spot`` choice allows (``spot: never`` is priced
    on-demand, ``only`` spot) against the cap in force."""
    b, workers = spec.resources.bundle(), spec.min_workers or spec.num_workers  # (elastic: its smallest size)
    gang = Gang(spec.name, workers, float(b.get("GPU", 0)), float(b.get("CPU", 0)),
                strict_spread=spec.placement_strategy.value == "STRICT_SPREAD", spot=spec.spot)
    rate = cheapest_gang_usd_per_hour(types, gang)
    if rate is not None and rate > cap_usd_per_hour + 1e-9:
        kind = {"never": " on-demand", "only": " spot"}.get(spec.spot, "")
        return (f"budget: its {workers} worker(s) need at least {rate:.2f} USD/h of rented{kind} nodes, "
                f"more than max_hourly_budget_usd {cap_usd_per_hour:.2f}")
    return None


class SubmitGate:
    def __init__(self, *, ops, nodes, tenants: Callable[[], Any], bundles_of: Callable[[JobSpec], list[dict]],
                 elastic_nodes: dict, elastic_nodes_for: dict, budget_types, config_cap_usd_per_hour: float | None,
                 state_dir: Path, clock: Callable[[], float]):
        self._ops, self._nodes, self._tenants, self._bundles_of = ops, nodes, tenants, bundles_of
        self._elastic_nodes, self._elastic_nodes_for = elastic_nodes, elastic_nodes_for
        self.budget_types, self._config_cap, self._state_dir = budget_types, config_cap_usd_per_hour, state_dir
        self._ep_checked = TTLCache(clock)
        self._cap_cache = TTLCache(clock)
        self._feasible_for: object = None
        self._feasible: dict[tuple, str | None] = {}

    def check(self, spec: JobSpec, never_placed: str = "job can never be placed") -> None:
        """Raise the first refusal (typed, naming the field); return when the spec may be stored."""
        self.check_tenant_limits(spec)
        self.check_entrypoint(spec)
        why = self.infeasible(spec)
        if why:
            raise InfeasibleJob(f"{never_placed}: {why}", field="num_workers")

    def check_tenant_limits(self, spec: JobSpec) -> None:
        """Refuse a job over its tenant's per-job limits, naming the spec field."""
        b = spec.resources.bundle()
        found = check_job_limits(self._tenants(), spec.tenant, spec.num_workers, b.get("GPU", 0.0),
                                 b.get("CPU", 0.0), spec.priority, spec.max_runtime_s)
        if found:
            field, why = found
            raise InvalidJobSpec(f"{field}: {why}", field=field)

    def check_entrypoint(self, spec: JobSpec) -> None:
        key = spec.entrypoint + "|" + json.dumps(spec.runtime_env, sort_keys=True)
        if self._ep_checked.fresh(key, C.ENTRYPOINT_CHECK_CACHE_S):
            return
        reason = self._ops.check_entrypoint(spec.entrypoint, spec.runtime_env, C.ENTRYPOINT_CHECK_TIMEOUT_S)
        if reason:
            raise EntrypointImportError(f"entrypoint {spec.entrypoint!r} cannot be used: {reason}",
                                        field="entrypoint")
        self._ep_checked.put(key, True)

    def infeasible(self, spec: JobSpec) -> str | None:
        """Why the gang can never be placed on the cluster's nodes (None: it can), remembered per
        gang shape for as long as the node table read is reused (a burst of similar submits). A
        refusal is made on a table read now: one up to ``NODE_TOTALS_TTL_S`` old would refuse, for
        good, a gang that a node added a moment ago makes feasible."""
        why = self._infeasible(spec, C.NODE_TOTALS_TTL_S)
        return self._infeasible(spec, 0.0) if why else None

    def _infeasible(self, spec: JobSpec, max_age_s: float) -> str | None:
        nodes = self._nodes.nodes(max_age_s)
        if self._feasible_for is not nodes:
            self._feasible_for, self._feasible = nodes, {}
        cap = self.live_cap() if self.budget_types else None
        bundles = self._bundles_of(spec, spec.min_workers)  # an elastic gang: its smallest size
        key = (json.dumps(bundles, sort_keys=True), spec.placement_strategy.value, spec.spot, cap)
        if key not in self._feasible:
            total, _free = totals_and_free(nodes)
            rented = {n["id"] for n in nodes if RENTAL_LABEL in (n.get("labels") or {})}
            if self._elastic_nodes:  # the largest cluster the autoscaler may make: fixed nodes + all it may rent
                may_rent = self._elastic_nodes_for.get(spec.spot, self._elastic_nodes)
                total = {**{n: r for n, r in total.items() if n not in rented}, **may_rent}
            why = infeasible_reason(bundles, spec.placement_strategy.value, total)
            if why and self._elastic_nodes:
                why += f" (counting the {len(may_rent)} node(s) the autoscaler may rent for it)"
            if not why and cap is not None:
                fixed = {n: r for n, r in totals_and_free(nodes)[0].items() if n not in rented}
                if infeasible_reason(bundles, spec.placement_strategy.value, fixed):  # it needs rented nodes
                    why = over_budget(spec, self.budget_types, cap)
            self._feasible[key] = why
        return self._feasible[key]

    def live_cap(self) -> float | None:
        """The hourly cap in force now (``budget --set`` / ``PUT /budget`` change it at run time),
        read from the provider's books at most once a second."""
        def read() -> float | None:
            try:
                return spend.cap_usd_per_hour(self._state_dir)
            except Exception:
                log.exception("cannot read the hourly cap in force; using the config's")
                return self._config_cap

        return self._cap_cache.get("cap", 1.0, read)
