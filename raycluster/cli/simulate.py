"""``raycluster simulate TRACE``: replay a job trace in simulated time through the live policies
(``policy/simulate.py``) against the market and budget of an elastic cluster config, and the same
trace on a fixed on-demand pool sized for the peak; report cost, waits, utilisation, preemptions.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from raycluster.cli.format import print_json
from raycluster.errors import EXIT_OK, InvalidSetting


def sim_inputs(config_path: str, budget_usd: float | None = None) -> tuple[Any, Any, list]:
    """(MarketModel, BudgetConfig, node types) from ``configs/elastic.yaml`` or ``ray-cluster.yaml``."""
    import yaml

    from raycluster.policy.simulate import MarketModel
    from raycluster.provision import rayup
    from raycluster.provision.autoscaling import ElasticConfig, budget_view

    data = yaml.safe_load(Path(config_path).read_text())
    if not isinstance(data, dict):
        raise InvalidSetting(f"{config_path}: expected a mapping", field="config")
    if "available_node_types" in data:  # ray-cluster.yaml
        elastic, _state, _cpus = rayup.elastic_config(data, None)
    else:
        elastic = ElasticConfig(**{k: v for k, v in data.items() if k in ElasticConfig.__dataclass_fields__})
    if budget_usd is not None:
        elastic.max_hourly_budget_usd = budget_usd
    as_ray = {"head_node_type": "head", "provider": {"markets": elastic.markets},
              "available_node_types": {name: {"node_config": {k: t[k] for k in ("market", "kind", "gpu_type") if k in t},
                                              "resources": t.get("resources") or {}, "max_workers": t.get("max_workers", 0)}
                                       for name, t in elastic.node_types.items()}}
    _cap, types = budget_view(as_ray)
    if not types:
        raise InvalidSetting("the simulator needs node types priced in the config (the local market's price table)",
                             field="node_types")
    local = elastic.markets.get("local") or {}
    market = MarketModel(tuple(types), preemption_rate_per_hour=float(local.get("preemption_rate_per_hour", 0) or 0))
    return market, elastic.budget_config(), types


def cmd_simulate(args) -> int:
    from dataclasses import replace

    from raycluster.policy.trace import load

    from raycluster.policy.budget import BudgetConfigError
    from raycluster.policy.trace import TraceError

    try:
        trace = load(args.trace)
    except TraceError as exc:
        raise InvalidSetting(str(exc), field=exc.where) from None
    except OSError as exc:
        raise InvalidSetting(f"cannot read the trace {args.trace}: {exc.strerror or exc}", field="trace") from None
    try:
        market, cfg, types = sim_inputs(args.config, args.budget)
    except BudgetConfigError as exc:
        raise InvalidSetting(f"--budget: {exc}", field=exc.field) from None
    except OSError as exc:
        raise InvalidSetting(f"cannot read the config {args.config}: {exc.strerror or exc}", field="config") from None
    market = replace(market, launch_delay_s=args.launch_delay_s, checkpoint_every_s=args.checkpoint_every_s,
                     **({"preemption_rate_per_hour": args.preemption_rate} if args.preemption_rate is not None else {}))
    out = compare(trace, market, cfg, types, tick_s=args.tick_s, seed=args.seed)
    out["trace"] = str(args.trace)
    if args.json:
        print_json(out)
        return EXIT_OK
    show(out)
    return EXIT_OK


def compare(trace, market, cfg, types, *, tick_s: float = 60.0, seed: int = 0) -> dict[str, Any]:
    """The trace replayed elastic, and its accepted jobs on a fixed on-demand pool sized for the
    elastic run's peak; the offline lower bound of the accepted jobs."""
    from dataclasses import replace

    from raycluster.policy.simulate import accepted, lower_bound_usd, simulate

    t0 = time.perf_counter()
    elastic = simulate(trace, market, cfg, tick_s=tick_s, seed=seed)
    replay_s = time.perf_counter() - t0
    ok = accepted(trace, market, cfg)
    on_demand = min((t for t in types if t.kind == "on_demand"), key=lambda t: t.usd_per_hour / max(t.gpus, 1),
                    default=None)
    fixed = None
    if on_demand is not None:
        pool = {on_demand.name: max(1, elastic.peak_nodes)}
        fixed = simulate(ok, replace(market, preemption_rate_per_hour=0.0), cfg, fixed_pool=pool, seed=seed)
    bound = lower_bound_usd(ok, types)
    return {"jobs": len(trace), "elastic": elastic.to_dict(),
           "fixed_pool": fixed.to_dict() if fixed else None,
           "fixed_pool_nodes": {on_demand.name: max(1, elastic.peak_nodes)} if on_demand else None,
           "saved_vs_fixed_pool": round(1 - elastic.cost_usd / fixed.cost_usd, 4) if fixed and fixed.cost_usd else None,
           "lower_bound_usd": round(bound, 4),
           "over_lower_bound": round(elastic.cost_usd / bound - 1, 4) if bound else None,
           "replay_s": round(replay_s, 3), "jobs_per_s": round(len(trace) / replay_s, 1) if replay_s else None}


def show(out: dict[str, Any]) -> None:
    from types import SimpleNamespace

    e = SimpleNamespace(**out["elastic"])
    fixed = SimpleNamespace(**out["fixed_pool"]) if out["fixed_pool"] else None
    bound = out["lower_bound_usd"]
    print(f"{out['jobs']} jobs replayed in {out['replay_s']:.2f}s ({out['jobs_per_s']} jobs/s); "
          f"{e.rejected} could never run on this config (refused at submit)")
    print(f"elastic   cost {e.cost_usd:9.2f} USD  wait p50 {e.wait_p50_s:7.0f}s p99 {e.wait_p99_s:7.0f}s  "
          f"util {e.utilisation:.2f}  preemptions {e.preemptions}  peak {e.peak_nodes} nodes")
    if fixed:
        print(f"fixed     cost {fixed.cost_usd:9.2f} USD  wait p50 {fixed.wait_p50_s:7.0f}s p99 {fixed.wait_p99_s:7.0f}s  "
              f"util {fixed.utilisation:.2f}  ({out['fixed_pool_nodes']}, on-demand, held throughout)")
        print(f"saved {100 * out['saved_vs_fixed_pool']:.1f}% against the fixed pool")
    print(f"lower bound {bound:.2f} USD (every job's GPU-hours at the cheapest price it may use); "
          f"elastic is {100 * (out['over_lower_bound'] or 0):.1f}% above it")
