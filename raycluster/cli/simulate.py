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
    tenants = None
    if getattr(args, "tenants", None):
        from raycluster.store.tenants import read_tenants_file

        try:
            tenants = read_tenants_file(args.tenants)
        except ValueError as exc:  # (naming the file and the field)
            raise InvalidSetting(f"--tenants: {exc}", field="tenants") from None
    out = compare(trace, market, cfg, types, tick_s=args.tick_s, seed=args.seed, tenants=tenants)
    out.update(trace=str(args.trace), config=str(args.config), max_hourly_budget_usd=cfg.max_hourly_budget_usd,
               tick_s=args.tick_s, launch_delay_s=args.launch_delay_s,
               preemption_rate_per_hour=market.preemption_rate_per_hour, seed=args.seed,
               tenants=str(args.tenants) if getattr(args, "tenants", None) else None)
    if args.json:
        print_json(out)
        return EXIT_OK
    show(out)
    return EXIT_OK


def compare(trace, market, cfg, types, *, tick_s: float = 60.0, seed: int = 0, tenants=None) -> dict[str, Any]:
    """The trace replayed elastic, and its accepted jobs on a fixed on-demand pool sized for the
    elastic run's peak; the offline lower bound of the accepted jobs. ``tenants``: a tenants config
    whose quotas and budgets hold the trace's tenants' jobs (the elastic run; the fixed pool has none)."""
    from dataclasses import replace

    from raycluster.policy.sim_bounds import accepted, lower_bound_usd, never_runs
    from raycluster.policy.simulate import simulate

    t0 = time.perf_counter()
    elastic = simulate(trace, market, cfg, tick_s=tick_s, seed=seed, tenants=tenants)
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
           "replay_s": round(replay_s, 3), "jobs_per_s": round(len(trace) / replay_s, 1) if replay_s else None,
           "never_run": [{"job_id": j.job_id, "workers": j.workers, "gpus": j.gpus, "spot": j.spot, "why": why}
                         for j, why in never_runs(trace, market, cfg)]}


def duration(seconds: float | None) -> str:
    """``95`` -> ``1m35s``; ``7260`` -> ``2h01m``: a wait as people read it."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def show(out: dict[str, Any]) -> None:
    from raycluster.cli.format import text_table

    cap = out.get("max_hourly_budget_usd")
    print(f"simulated {out['trace']} on {out['config']}: budget "
          + (f"{cap:g} USD/h" if cap is not None else "uncapped")
          + f", budget policy every {duration(out['tick_s'])}, launch delay {duration(out['launch_delay_s'])}, "
          f"{out['preemption_rate_per_hour']:g} spot preemptions per node-hour, seed {out['seed']}")
    print(f"{out['jobs']} jobs replayed in {out['replay_s']:.2f}s ({out['jobs_per_s']} jobs/s)\n")

    def row(name: str, r: dict, extra: str) -> tuple:
        return (name, f"{r['cost_usd']:.2f}", duration(r["wait_p50_s"]), duration(r["wait_p99_s"]),
                f"{r['utilisation']:.2f}", str(r["preemptions"]), str(r["peak_nodes"]), extra)

    rows = [row("elastic", out["elastic"], "rented as jobs wait, given back when idle")]
    if out["fixed_pool"]:
        pool = ", ".join(f"{n} x{c}" for n, c in (out["fixed_pool_nodes"] or {}).items())
        rows.append(row("fixed pool", out["fixed_pool"], f"{pool} on-demand, held throughout"))
    print(text_table(("RUN", "COST_USD", "WAIT_P50", "WAIT_P99", "UTIL", "PREEMPTIONS", "PEAK_NODES", ""), rows))
    if out.get("saved_vs_fixed_pool") is not None:
        print(f"\nelastic saves {100 * out['saved_vs_fixed_pool']:.1f}% against the fixed pool; ", end="")
    else:
        print()
    print(f"lower bound {out['lower_bound_usd']:.2f} USD (every job's GPU-hours at the cheapest price it may use): "
          f"elastic is {100 * (out['over_lower_bound'] or 0):.1f}% above it")
    by_tenant = out["elastic"].get("cost_by_tenant_usd") or {}
    if len(by_tenant) > 1 or out.get("tenants"):
        print("jobs' cost by tenant (their shares of the nodes they ran on): "
              + ", ".join(f"{t} {usd:.2f} USD" for t, usd in sorted(by_tenant.items())))
    never = out.get("never_run") or []
    if never:
        print(f"\n{len(never)} job(s) could never run on this config (a submit refuses them):")
        print(text_table(("JOB", "WORKERS", "GPUS", "SPOT", "WHY"),
                         [(n["job_id"], str(n["workers"]), f"{n['gpus']:g}", n["spot"], n["why"]) for n in never]))
    else:
        print("every job could run on this config")
