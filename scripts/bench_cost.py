#!/usr/bin/env python
"""Cost benchmark (issue "Spend within the budget"). Writes JSON.

(1) The shipped trace (configs/traces/day.jsonl: a day shaped like the seed's — three model
    families, diurnal arrivals, about 32 GPUs at the peak) replayed by the what-if simulator through
    the live policies on the seed's setting (configs/sim-day.yaml: T4 spot 0.16 / on-demand 0.53
    USD/h, 4..32 workers, 10-minute cooldown, 12 USD/h budget, spot preempted 0.05/node-hour): cost
    against the same jobs on a fixed on-demand pool sized for the peak (the seed claims 41.7% saved;
    goal >= 40%), job wait p50/p99 of both, and the cost against an offline lower bound (every job's
    GPU-hours at the cheapest price it may use; goal: within 10%). Also with min_workers 0.
    Five seeds (spot preemption draws); the median run in full, ranges over the five.
(3) Live vs predicted: a short trace (--live-jobs one-GPU toy jobs arriving over a minute, each a
    known number of seconds of steps) run for real on an elastic local cluster (the local market, real
    node processes, Ray's autoscaler, our provider and BudgetAutoscaler) until every node is given
    back; its real spend (the rentals' books) against what the simulator predicts for the same trace
    and knobs with an a-priori market model (launch delay --live-launch-delay-s, per-job start
    overhead --live-job-overhead-s, the BudgetAutoscaler's interval as the tick). Goal: within 15%.
    The measured launch delays and job run times are reported beside it. The same for elastic gangs
    (LIVE_ELASTIC_TRACE: grows) and for a spot return (LIVE_SPOT_RETURN_TRACE: a job on an on-demand
    A10 for want of spot moves back to spot) and for consolidation (LIVE_CONSOLIDATE_TRACE: two half-empty
    spot nodes become one). --no-live skips them; --live-only KIND runs one alone.
(2) Simulator speed: --speed-jobs jobs on up to --speed-nodes nodes (synthetic days of the seed's
    shape peaking at that many GPUs, as many days as it takes), jobs/s (default 10,000 on 1,000: the
    goal is "in seconds").

Usage: python scripts/bench_cost.py [--out bench-results/bench_cost.json]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import log, write_result  # noqa: E402


def elastic_trace(trace):
    """The trace with every multi-worker gang elastic: ``num_workers: {min: workers // 2, max: workers}``."""
    return [replace(j, min_workers=max(1, j.workers // 2)) if j.workers > 1 else j for j in trace]


# the policy before issue "Spend less": no moves for cost, a busy cluster kept every idle node, an idle
# on-demand node went at the idle timeout as a spot one
PREVIOUS_POLICY = {"max_moves_per_hour": 0, "busy_idle_nodes_kept": 10 ** 6, "idle_timeout_by_price": False}


def shipped(config: Path, trace_path: Path) -> dict:
    from raycluster.cli.simulate import compare, sim_inputs
    from raycluster.policy.trace import load

    rigid = load(trace_path)
    market, cfg, types = sim_inputs(str(config))
    out = {}
    # the previous policy side by side: the same knobs, the same trace and draws
    for label, c, trace in (("seed_knobs", cfg, rigid), ("seed_knobs_elastic_gangs", cfg, elastic_trace(rigid)),
                            ("previous_policy", replace(cfg, **PREVIOUS_POLICY), rigid),
                            ("seed_knobs_no_cost_moves", replace(cfg, max_moves_per_hour=0), rigid),
                            ("min_workers_0", replace(cfg, min_workers=0), rigid)):
        runs = [compare(trace, market, c, types, seed=s) for s in range(5)]  # 5 draws of the spot preemptions
        over = sorted(x["over_lower_bound"] for x in runs)
        saved = sorted(x["saved_vs_fixed_pool"] for x in runs)
        r = sorted(runs, key=lambda x: x["elastic"]["cost_usd"])[2]  # the median run, shown in full
        e, f = r["elastic"], r["fixed_pool"]
        row = {"elastic_cost_usd": e["cost_usd"], "fixed_pool_cost_usd": f["cost_usd"],
               "fixed_pool_nodes": r["fixed_pool_nodes"], "saved_vs_fixed_pool": r["saved_vs_fixed_pool"],
               "lower_bound_usd": r["lower_bound_usd"], "over_lower_bound": r["over_lower_bound"],
               "wait_p50_s": e["wait_p50_s"], "wait_p99_s": e["wait_p99_s"],
               "fixed_wait_p50_s": f["wait_p50_s"], "fixed_wait_p99_s": f["wait_p99_s"],
               "utilisation": e["utilisation"], "fixed_utilisation": f["utilisation"],
               "preemptions": e["preemptions"], "moves_for_cost": e.get("moves", {}), "peak_nodes": e["peak_nodes"],
               "peak_usd_per_hour": e["peak_usd_per_hour"], "budget_usd_per_hour": c.max_hourly_budget_usd,
               "jobs": r["jobs"], "rejected": e["rejected"], "replay_s": r["replay_s"],
               "seeds": 5, "over_lower_bound_range": [over[0], over[-1]], "saved_range": [saved[0], saved[-1]],
               "cost_usd_range": [min(x["elastic"]["cost_usd"] for x in runs),
                                  max(x["elastic"]["cost_usd"] for x in runs)]}
        log(f"(1) {label}: {row}")
        out[label] = row
    out["elastic_vs_rigid_half_peak_budget"] = elastic_vs_rigid(rigid, market, cfg)
    return out


def elastic_vs_rigid(rigid, market, cfg) -> dict:
    """The shipped trace rigid and elastic (``elastic_trace``) under an hourly cap that pays for half
    the peak of the rigid trace's uncapped run: completed GPU-hours per USD, makespan, waits (the
    median of five draws each)."""
    from raycluster.policy.simulate import simulate

    peak = simulate(rigid, market, replace(cfg, max_hourly_budget_usd=None), seed=0).peak_usd_per_hour
    cap = round(peak / 2, 2)
    out = {"budget_usd_per_hour": cap, "uncapped_peak_usd_per_hour": peak}
    for label, trace in (("rigid", rigid), ("elastic", elastic_trace(rigid))):
        runs = sorted((simulate(trace, market, replace(cfg, max_hourly_budget_usd=cap), seed=s) for s in range(5)),
                      key=lambda r: r.cost_usd)
        r = runs[2]
        work_gpu_h = sum(j.duration_s / 3600.0 * j.workers * j.gpus for j in trace)  # every job finishes
        out[label] = {"finished": r.finished, "cost_usd": round(r.cost_usd, 2),
                      "gpu_hours_per_usd": round(work_gpu_h / r.cost_usd, 3) if r.cost_usd else None,
                      "gpu_hours_per_usd_range": [round(work_gpu_h / x.cost_usd, 3) for x in (runs[-1], runs[0])],
                      "makespan_h": round(r.makespan_s / 3600.0, 2), "wait_p50_s": r.wait_p50_s,
                      "wait_p99_s": r.wait_p99_s, "moves": r.moves, "peak_usd_per_hour": r.peak_usd_per_hour}
    log(f"(1) elastic vs rigid under half the peak: {out}")
    return out


def speed(jobs: int, nodes: int) -> dict:
    from raycluster.policy.budget import BudgetConfig, NodeType
    from raycluster.policy.simulate import MarketModel, simulate
    from raycluster.policy.trace import day_trace

    days = 1
    trace = day_trace(jobs=jobs, peak_workers=nodes, seed=11)
    while len(trace) < jobs:  # a day at this peak has fewer jobs: as many days in a row as it takes
        days += 1
        trace = day_trace(jobs=jobs, peak_workers=nodes, seed=11, days=days)
    types = (NodeType("gpu_spot", "spot", 0.16, 1, 8, nodes, nodes), NodeType("gpu_ondemand", "on_demand", 0.53, 1, 8,
                                                                              nodes, nodes))
    market = MarketModel(types, launch_delay_s=60, preemption_rate_per_hour=0.05)
    cfg = BudgetConfig(min_workers=0, max_workers=nodes, cooldown_s=600, idle_timeout_s=300)
    t0 = time.perf_counter()
    r = simulate(trace, market, cfg, seed=1)
    s = time.perf_counter() - t0
    out = {"jobs": len(trace), "days": days, "max_nodes": nodes, "peak_nodes": r.peak_nodes, "finished": r.finished,
           "replay_s": round(s, 2), "jobs_per_s": round(len(trace) / s, 1)}
    log(f"(2) speed: {out}")
    return out


LIVE_TRACE = [  # (arrival s, steps of 0.5 s): 8 one-GPU jobs over a minute on at most 3 spot T4 nodes
    (0, 60), (0, 80), (5, 40), (10, 60), (20, 100), (30, 40), (45, 60), (60, 80)]
LIVE_STEP_S = 0.5
# elastic gangs ({min: 1, max: 2} one-GPU workers of jobs.toy:elastic): (arrival s, steps); a step is
# LIVE_ELASTIC_BATCH samples at LIVE_SAMPLE_S each, shared by the ranks (1 s at 2 workers, 2 s at 1)
LIVE_ELASTIC_TRACE = [(0, 40), (0, 30), (10, 40), (25, 30), (40, 40)]
LIVE_ELASTIC_BATCH, LIVE_SAMPLE_S = 8, 0.25
# spot return: (arrival s, steps of 0.5 s, max_runtime_s) on 2 spot T4 + 1 on-demand A10: the third job
# finds no spot left, runs on the A10, and moves back to spot (checkpoint first) once the others end
LIVE_SPOT_RETURN_TRACE = [(0, 40, None), (0, 40, None), (15, 240, 900)]  # (the third once both spot nodes run)
# consolidation: (arrival s, steps of 0.5 s, max_runtime_s) of half-GPU jobs on 2 spot T4: a pair (2 workers,
# STRICT_SPREAD) rents both nodes; two long jobs, submitted once the pair runs, take the other halves; when the
# pair ends each node is half empty: one long job moves onto the other's free half and its node is given back
LIVE_CONSOLIDATE_TRACE = [(0, 40, None), (0, 240, 900), (0, 240, 900)]


def _live_spec(i: int, at: float, steps: int, elastic: bool, max_runtime_s: float | None = None,
               consolidate: bool = False) -> dict:
    if consolidate:  # half-GPU jobs: the first a STRICT_SPREAD pair, the rest long ones (they checkpoint)
        extra = ({"max_runtime_s": max_runtime_s, "checkpoint": {"every_steps": 10}} if i else
                 {"num_workers": 2, "placement_strategy": "STRICT_SPREAD"})
        return {"name": f"live-half-{i}", "entrypoint": "jobs.toy:counter", "resources": {"gpus": 0.5, "cpus": 1},
                "config": {"steps": steps, "sleep_per_step_s": LIVE_STEP_S}, **extra}
    if not elastic:  # (with max_runtime_s: the expected runtime a move for cost weighs; it checkpoints)
        extra = {"max_runtime_s": max_runtime_s, "checkpoint": {"every_steps": 10}} if max_runtime_s else {}
        return {"name": f"live-{i}", "entrypoint": "jobs.toy:counter", "resources": {"gpus": 1, "cpus": 1},
                "config": {"steps": steps, "sleep_per_step_s": LIVE_STEP_S}, **extra}
    return {"name": f"live-elastic-{i}", "entrypoint": "jobs.toy:elastic", "num_workers": {"min": 1, "max": 2},
            "resources": {"gpus": 1, "cpus": 1}, "checkpoint": {"every_steps": 5},
            "config": {"num_samples": LIVE_ELASTIC_BATCH * steps, "global_batch": LIVE_ELASTIC_BATCH, "epochs": 1,
                       "sleep_per_sample_s": LIVE_SAMPLE_S}}


def _live_trace_job(i: int, at: float, steps: int, elastic: bool, job_overhead_s: float,
                    max_runtime_s: float | None = None, consolidate: bool = False):
    from raycluster.policy.simulate import TraceJob

    if consolidate:
        return TraceJob(f"live-half-{i}", float(at), steps * LIVE_STEP_S + job_overhead_s, 1 if i else 2, 0.5, 1.0,
                        strategy="PACK" if i else "STRICT_SPREAD", max_runtime_s=max_runtime_s)
    if not elastic:
        return TraceJob(f"live-{i}", float(at), steps * LIVE_STEP_S + job_overhead_s, 1, 1.0, 1.0,
                        max_runtime_s=max_runtime_s)
    # its work at 2 workers: a step of half the batch each; the start overhead once
    return TraceJob(f"live-elastic-{i}", float(at), steps * LIVE_ELASTIC_BATCH / 2 * LIVE_SAMPLE_S + job_overhead_s,
                    2, 1.0, 1.0, min_workers=1)


def live(launch_delay_s: float, job_overhead_s: float, kind: str = "toy") -> dict:
    """Run LIVE_TRACE (``kind`` "elastic": LIVE_ELASTIC_TRACE; "spot_return": LIVE_SPOT_RETURN_TRACE on
    spot T4 + an on-demand A10) on a real elastic local cluster; its spend against the simulator's
    prediction."""
    elastic = kind == "elastic"
    import tempfile

    for key in [k for k in os.environ if k.startswith("RAYCLUSTER_") and k != "RAYCLUSTER_STATE_DIR"]:
        os.environ.pop(key)  # every knob at a user's default (before raycluster.constants is read)

    import ray

    from raycluster import constants as C
    from raycluster.client.ray_client import Client
    from raycluster.control.actors import start_runtime
    from raycluster.policy.budget import NodeType
    from raycluster.policy.simulate import MarketModel, simulate
    from raycluster.provision.autoscaling import ElasticConfig
    from raycluster.provision.local.cluster import LocalCluster
    from raycluster.provision.spend import cost
    from raycluster.store.rentals import RentalStore
    from raycluster.store.usage import UsageStore

    # the cluster's own config (as a user's YAML would say); every RAYCLUSTER_* knob at its default
    spot, nodes, idle_s, cooldown_s, tick_s = 0.16, 3, 10.0, 5.0, C.BUDGET_INTERVAL_S
    on_demand = 0.53
    consolidate = kind == "consolidate"
    spot_nodes = 2 if kind in ("spot_return", "consolidate") else nodes  # (spot_return: the A10 is the third node)
    node_types = {"gpu_spot": {"market": "local", "kind": "spot", "gpu_type": "T4", "max_workers": spot_nodes,
                               "resources": {"CPU": 2, "GPU": 1}}}
    gpu_types = {"T4": {"gpus": 1, "cpus": 2, "capacity": spot_nodes, "spot_usd_per_hour": spot,
                        "on_demand_usd_per_hour": on_demand}}
    if kind == "spot_return":
        node_types["gpu_ondemand"] = {"market": "local", "kind": "on_demand", "gpu_type": "A10", "max_workers": 1,
                                      "resources": {"CPU": 2, "GPU": 1}}
        gpu_types["A10"] = {"gpus": 1, "cpus": 2, "capacity": 1, "on_demand_usd_per_hour": on_demand}
    cfg = ElasticConfig(node_types=node_types, markets={"local": {"gpu_types": gpu_types}},
                        max_workers=nodes, idle_timeout_s=idle_s, update_interval_s=5, join_timeout_s=120,
                        budget={"cooldown_s": cooldown_s})
    env: dict[str, str] = {}
    state_dir = Path(tempfile.mkdtemp(prefix="rc-bench-cost-"))
    lc = LocalCluster(state_dir, num_workers=0, head_cpus=1, elastic=cfg, env=env)
    lc.start()
    try:
        lc.connect(log_to_driver=False)
        start_runtime(state_dir)
        client = Client()
        ids: list[str] = []
        t0 = time.time()

        live_trace = {"elastic": LIVE_ELASTIC_TRACE, "spot_return": LIVE_SPOT_RETURN_TRACE,
                      "consolidate": LIVE_CONSOLIDATE_TRACE}.get(kind, [(at, steps, None) for at, steps in LIVE_TRACE])
        live_trace = [(x[0], x[1], x[2] if len(x) > 2 else None) for x in live_trace]

        def submit_all():
            for i, (at, steps, max_runtime_s) in enumerate(live_trace):
                time.sleep(max(0.0, t0 + at - time.time()))
                if consolidate and i:  # the long jobs once the pair runs (on both nodes), as they arrive then
                    while client.get(ids[0])["state"] != "RUNNING" and time.time() < t0 + 300:
                        time.sleep(0.2)
                    arrived[i] = time.time() - t0
                ids.append(client.submit(_live_spec(i, at, steps, elastic, max_runtime_s, consolidate))["id"])

        arrived: dict[int, float] = {}
        submit_all()
        live_trace = [(arrived.get(i, at), steps, mr) for i, (at, steps, mr) in enumerate(live_trace)]
        final = client.wait(ids, timeout_s=900)
        assert all(j["state"] == "SUCCEEDED" for j in final), [(j["state"], j["error"]) for j in final]
        store = RentalStore(lc.cluster_dir / "provider" / "rentals.db")
        deadline = time.time() + 300
        while store.committed_usd_per_hour() > 0 and time.time() < deadline:
            time.sleep(1)
        bill = cost(state_dir)
        rentals = [r for r in store.list(None) if r.market == "local"]
        usage = UsageStore(state_dir / "jobs.db").rows()
        first_use = {}
        for u in usage:
            first_use[u["rental_id"]] = min(first_use.get(u["rental_id"], u["start"]), u["start"])
        delays = sorted(first_use[r.id] - r.created_at for r in rentals if r.id in first_use)
        runs = sorted(u["end"] - u["start"] for u in usage if u["end"] is not None)
        jobs = {j["id"]: j for j in final}
        waits = sorted(jobs[i]["started_at"] - jobs[i]["submitted_at"] for i in ids
                       if jobs[i].get("started_at"))
        sizes = [[t["reason"] for t in client.get(i)["transitions"] if t["cause"] in ("admitted", "resumed")]
                 for i in ids] if elastic else None
        grows = sum(1 for i in ids for t in client.get(i)["transitions"] if t["cause"] == "elastic_grow")
        returns = sum(1 for i in ids for t in client.get(i)["transitions"] if t["cause"] == "spot_return")
        consolidations = sum(1 for i in ids for t in client.get(i)["transitions"] if t["cause"] == "consolidate")
    finally:
        ray.shutdown()
        lc.stop()
    trace = [_live_trace_job(i, at, steps, elastic, job_overhead_s, mr, consolidate)
             for i, (at, steps, mr) in enumerate(live_trace)]
    # (a move — a grow, a spot return —: its checkpoint and the restart of its ranks, as the start overhead)
    types = (NodeType("gpu_spot", "spot", spot, 1, 2, spot_nodes, spot_nodes),)
    if kind == "spot_return":
        types += (NodeType("gpu_ondemand", "on_demand", on_demand, 1, 2, 1, 1),)
    market = MarketModel(types, launch_delay_s=launch_delay_s, move_overhead_s=job_overhead_s)
    from raycluster.policy.budget import BudgetConfig

    sim = simulate(trace, market, BudgetConfig(min_workers=0, max_workers=nodes, cooldown_s=cooldown_s,
                                               idle_timeout_s=idle_s), tick_s=tick_s,
                   grow_interval_s=C.ELASTIC_GROW_INTERVAL_S)
    real = bill["spend_usd"]
    out = {"jobs": len(live_trace), "kind": kind, "real_spend_usd": round(real, 6),
           "predicted_usd": round(sim.cost_usd, 6),
           "error": round(real / sim.cost_usd - 1, 4) if sim.cost_usd else None,
           "real_node_hours": round(sum(r.cost_usd(time.time()) / r.usd_per_hour for r in rentals), 4),
           "predicted_node_hours": round(sim.node_hours, 4), "rentals": len(rentals), "predicted_peak_nodes":
           sim.peak_nodes, "assumed": {"launch_delay_s": launch_delay_s, "job_overhead_s": job_overhead_s,
                                       "tick_s": tick_s, "idle_timeout_s": idle_s, "cooldown_s": cooldown_s},
           "measured": {"launch_to_first_job_s": [round(x, 1) for x in delays],
                        "job_run_s_median": round(runs[len(runs) // 2], 1) if runs else None,
                        "wait_p50_s": round(waits[len(waits) // 2], 1) if waits else None}}
    if consolidate:
        out["measured"]["consolidations"] = consolidations
        out["predicted_consolidations"] = sim.moves.get("consolidate", 0)
        out["measured"]["long_jobs_arrived_at_s"] = round(live_trace[1][0], 1)
    if kind == "spot_return":
        out["measured"]["spot_returns"] = returns
        out["predicted_spot_returns"] = sim.moves.get("spot_return", 0)
    if elastic:
        out["measured"]["elastic_grows"] = grows
        out["measured"]["starts"] = sizes
        out["predicted_elastic_grows"] = sim.moves.get("elastic_grow", 0)
    log(f"(3) live vs predicted ({kind}): {out}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "sim-day.yaml"))
    ap.add_argument("--trace", default=str(ROOT / "configs" / "traces" / "day.jsonl"))
    ap.add_argument("--speed-jobs", type=int, default=10_000)
    ap.add_argument("--speed-nodes", type=int, default=1_000)
    ap.add_argument("--no-live", action="store_true", help="skip (3), the runs on a real local cluster")
    ap.add_argument("--live-only", choices=("toy", "elastic", "spot_return", "consolidate"),
                    help="(3) alone, of this trace")
    ap.add_argument("--live-launch-delay-s", type=float, default=5.0,
                    help="the simulator's launch delay for (3) (bench_scale measures the local market's)")
    ap.add_argument("--live-job-overhead-s", type=float, default=3.0,
                    help="seconds a job takes beyond its steps in (3) (start of the rank, imports)")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "bench_cost.json"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = {"machine": {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}}
    if args.live_only:
        result["live_vs_predicted"] = live(args.live_launch_delay_s, args.live_job_overhead_s, kind=args.live_only)
        write_result(result, args.out)
        return 0
    result["shipped_trace"] = shipped(Path(args.config), Path(args.trace))
    result["simulator_speed"] = speed(args.speed_jobs, args.speed_nodes)
    if not args.no_live:
        result["live_vs_predicted"] = live(args.live_launch_delay_s, args.live_job_overhead_s)
        result["live_vs_predicted_elastic_gangs"] = live(args.live_launch_delay_s, args.live_job_overhead_s,
                                                         kind="elastic")
        result["live_vs_predicted_spot_return"] = live(args.live_launch_delay_s, args.live_job_overhead_s,
                                                       kind="spot_return")
        result["live_vs_predicted_consolidation"] = live(args.live_launch_delay_s, args.live_job_overhead_s,
                                                         kind="consolidate")
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
