"""What a trace's jobs could cost at best and which could run at all, for the what-if simulator
(``policy.simulate``) and ``raycluster simulate``. Pure, no Ray.

Owns: ``why_never`` (a job a submit would refuse on this market and config: too big for every node
type and the worker limits, or cheaper nowhere than the cap — an elastic gang judged at its smallest
size), ``accepted`` / ``never_runs`` (the trace split by it) and ``lower_bound_usd`` (the offline
lower bound: every job's GPU-hours at the cheapest price per GPU-hour it may use, no idle time, no
launch delay — an elastic gang's work is the same GPU-hours at any size).
"""

from __future__ import annotations

from typing import Iterable

from raycluster.policy.budget import KIND_RESOURCE, KIND_RESOURCE_UNITS, BudgetConfig, Gang, NodeType, with_kind
from raycluster.policy.sim_types import MarketModel, TraceJob


def accepted(trace: Iterable[TraceJob], market: MarketModel, config: BudgetConfig,
             fixed_pool: dict[str, int] | None = None) -> list[TraceJob]:
    """The jobs a submit would accept (the rest could never run: too big, or past the budget)."""
    return [j for j in trace if why_never(j, market, config, fixed_pool) is None]


def never_runs(trace: Iterable[TraceJob], market: MarketModel, config: BudgetConfig) -> list[tuple[TraceJob, str]]:
    """The jobs a submit would refuse, each with why (the complement of ``accepted``)."""
    return [(j, why) for j in trace if (why := why_never(j, market, config, None)) is not None]


def why_never(j: TraceJob, market: MarketModel, config: BudgetConfig, fixed_pool: dict[str, int] | None) -> str | None:
    """Why ``j`` could never run on this market/config (too big for every node type and the
    worker limits, or cheaper nowhere than the cap), or None when it could."""
    from raycluster.policy.budget import cheapest_gang_usd_per_hour
    from raycluster.policy.placement import infeasible_reason

    if fixed_pool:
        types = {t.name: t for t in market.types}
        totals = {f"{name}#{i}": {"GPU": float(types[name].gpus), "CPU": float(types[name].cpus),
                                  KIND_RESOURCE[types[name].kind]: KIND_RESOURCE_UNITS}
                  for name, count in fixed_pool.items() for i in range(count)}
        return infeasible_reason(with_kind([{"GPU": j.gpus, "CPU": j.cpus}] * (j.min_workers or j.workers), j.spot),
                                 j.strategy, totals)
    gang = Gang(j.job_id, j.min_workers or j.workers, j.gpus, j.cpus, strict_spread=j.strategy == "STRICT_SPREAD", spot=j.spot)
    limited = tuple(NodeType(t.name, t.kind, t.usd_per_hour, t.gpus, t.cpus, t.available,
                             min(t.max_workers, t.available, config.max_workers)) for t in market.types)
    rate = cheapest_gang_usd_per_hour(limited, gang, config.spot_fallback_preemptions)
    if rate is None:
        kinds = {"only": "spot ", "never": "on-demand "}.get(j.spot, "")
        return (f"no {kinds}node types can hold {j.workers} x {j.gpus:g} GPU" + (" (strictly spread)" if
                j.strategy == "STRICT_SPREAD" else "") + f" within max_workers {config.max_workers}")
    cap = config.max_hourly_budget_usd
    if cap is not None and rate > cap + 1e-9:
        return f"costs at least {rate:.2f} USD/h, over the {cap:g} USD/h cap"
    return None


def lower_bound_usd(trace: Iterable[TraceJob], types: Iterable[NodeType]) -> float:
    """The least any policy could pay: every job's GPU-hours at the cheapest price per GPU-hour it
    may use (spot for auto/only, on-demand for never), no idle time, no launch delay."""
    types = list(types)
    out = 0.0
    for j in trace:
        kinds = {"only": {"spot"}, "never": {"on_demand"}}.get(j.spot, {"spot", "on_demand"})
        per_gpu = [t.usd_per_hour / t.gpus for t in types if t.kind in kinds and t.gpus]
        if per_gpu:
            out += j.duration_s / 3600.0 * j.gpus * j.workers * min(per_gpu)
    return out
