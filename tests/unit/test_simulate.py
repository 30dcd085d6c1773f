"""The what-if simulator (policy/simulate.py) and traces (policy/trace.py): deterministic, built on
the live policies (not copies), within the budget, and bad traces named by line and field."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import raycluster.control.elastic.budget_autoscaler as live_loop
import raycluster.policy.admission as admission
import raycluster.policy.budget as budget
import raycluster.policy.placement as placement
import raycluster.policy.simulate as sim
from raycluster.policy.budget import BudgetConfig, NodeType
from raycluster.policy.sim_bounds import accepted, lower_bound_usd
from raycluster.policy.simulate import MarketModel, TraceJob, simulate
from raycluster.policy.trace import TraceError, day_trace, dump_jsonl, load

ROOT = Path(__file__).resolve().parents[2]
TYPES = (NodeType("gpu_spot", "spot", 0.16, 1, 8, 64, 32), NodeType("gpu_ondemand", "on_demand", 0.53, 1, 8, 64, 32))
MARKET = MarketModel(TYPES, launch_delay_s=60, preemption_rate_per_hour=0.1)
CFG = BudgetConfig(min_workers=2, max_workers=32, cooldown_s=600, idle_timeout_s=300, max_hourly_budget_usd=6.0)


def test_the_simulator_replays_the_live_policies_not_copies():
    assert sim.decide is budget.decide and live_loop.decide is budget.decide
    assert sim.AdmissionQueue is admission.AdmissionQueue and admission.FreeView is placement.FreeView
    assert sim.with_kind is budget.with_kind


def test_the_same_trace_twice_gives_the_same_report_and_another_seed_another():
    trace = day_trace(jobs=120, peak_workers=24, seed=3)
    a, b = simulate(trace, MARKET, CFG, seed=5), simulate(trace, MARKET, CFG, seed=5)
    assert a.to_dict() == b.to_dict() and a.finished == len(trace) and a.preemptions > 0
    assert simulate(trace, MARKET, CFG, seed=6).to_dict() != a.to_dict()


@pytest.mark.parametrize("cap", [1.0, 3.0, 6.0])
def test_the_committed_rate_never_passes_the_cap_and_every_accepted_job_finishes(cap):
    cfg = BudgetConfig(min_workers=0, max_workers=32, cooldown_s=60, idle_timeout_s=60, max_hourly_budget_usd=cap)
    trace = day_trace(jobs=120, peak_workers=24, seed=3)
    r = simulate(trace, MARKET, cfg, seed=1)
    assert 0 < r.peak_usd_per_hour <= cap + 1e-9
    assert r.finished == len(accepted(trace, MARKET, cfg)) == r.jobs - r.rejected


def test_elastic_beats_a_fixed_pool_and_stays_near_the_lower_bound():
    trace = day_trace(jobs=1000, peak_workers=32, seed=7)
    quiet = MarketModel(TYPES, launch_delay_s=60, preemption_rate_per_hour=0.0)
    cfg = BudgetConfig(min_workers=0, max_workers=32, cooldown_s=600, idle_timeout_s=300)
    e = simulate(trace, quiet, cfg)
    f = simulate(trace, quiet, cfg, fixed_pool={"gpu_ondemand": e.peak_nodes})
    bound = lower_bound_usd(trace, TYPES)
    assert e.cost_usd < f.cost_usd and bound <= e.cost_usd
    assert e.utilisation > f.utilisation


def test_a_gang_that_can_never_run_is_refused_not_waited_for_forever():
    trace = [TraceJob("ok", 0, 600), TraceJob("huge", 0, 600, workers=40, strategy="STRICT_SPREAD"),
             TraceJob("pricey", 0, 600, workers=20, spot="never")]
    r = simulate(trace, MARKET, CFG)
    assert (r.rejected, r.finished) == (2, 1)  # 40 nodes > 32; 20 on-demand = 10.6 USD/h > 6


def test_traces_round_trip_and_bad_lines_name_the_line_and_field(tmp_path):
    trace = day_trace(jobs=30, seed=1)
    p = tmp_path / "t.jsonl"
    p.write_text(dump_jsonl(trace))
    assert load(p) == trace
    csv = tmp_path / "t.csv"
    csv.write_text("job_id,arrival_s,duration_s,workers,gpus\na,0,60,2,1\nb,5,30,,\n")
    assert [(j.job_id, j.workers, j.gpus) for j in load(csv)] == [("a", 2, 1.0), ("b", 1, 1.0)]
    for text, where in (('{"arrival_s": 1}\n', "t.jsonl:1.duration_s"),
                        ('{"arrival_s": 1, "duration_s": 5}\n{"arrival_s": "x", "duration_s": 1}\n', "t.jsonl:2.arrival_s"),
                        ('{"arrival_s": 1, "duration_s": 5, "spot": "maybe"}\n', "t.jsonl:1.spot"),
                        ('{"arrival_s": 1, "duration_s": 5, "colour": 3}\n', "t.jsonl:1"),
                        ("not json\n", "t.jsonl:1"), ("", "t.jsonl")):
        p.write_text(text)
        with pytest.raises(TraceError) as e:
            load(p)
        assert e.value.where == where, (text, e.value)


@pytest.mark.timeout(120)
def test_raycluster_simulate_on_the_shipped_trace(tmp_path):
    out = subprocess.run([sys.executable, "-m", "raycluster.cli", "--json", "simulate", "configs/traces/day.jsonl"],
                         cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["jobs"] == 183 and rep["elastic"]["finished"] == 183 and rep["saved_vs_fixed_pool"] > 0.4
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"arrival_s": -1, "duration_s": 5}\n')
    err = subprocess.run([sys.executable, "-m", "raycluster.cli", "simulate", str(bad)], cwd=ROOT,
                         capture_output=True, text=True, timeout=100)
    assert err.returncode == 2 and "bad.jsonl:1.arrival_s: must be >= 0.0" in err.stderr


def test_the_jobs_that_could_never_run_are_listed_with_why():
    from raycluster.policy.sim_bounds import never_runs

    trace = [TraceJob("ok", 0, 600), TraceJob("huge", 0, 600, workers=40, strategy="STRICT_SPREAD"),
             TraceJob("pricey", 0, 600, workers=20, spot="never")]
    assert [(j.job_id, why) for j, why in never_runs(trace, MARKET, CFG)] == [
        ("huge", "no node types can hold 40 x 1 GPU (strictly spread) within max_workers 32"),
        ("pricey", "costs at least 10.60 USD/h, over the 6 USD/h cap")]


def test_raycluster_simulate_prints_a_table_naming_its_config_with_waits_as_durations(capsys):
    from raycluster.cli.main import main
    from raycluster.cli.simulate import duration

    assert [duration(s) for s in (0, 59.6, 95, 3599, 7260)] == ["0s", "1m00s", "1m35s", "59m59s", "2h01m"]
    assert main(["simulate", str(ROOT / "configs/traces/day.jsonl"), "--config", str(ROOT / "configs/sim-day.yaml"),
                 "--budget", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "sim-day.yaml: budget 0.5 USD/h" in out and "WAIT_P50" in out and "could never run" in out
    assert "over the 0.5 USD/h cap" in out and "{" not in out  # a table, not a Python dict


def test_the_replay_moves_jobs_for_cost_as_live_and_it_costs_less_than_without():
    """Spot capacity 2: the third long job goes on-demand; when the two short ones end, it moves back
    to spot (the live rule, told the running gangs as live) — cheaper than with moves for cost off
    (``max_moves_per_hour: 0``); its work done is kept (only the move's overhead is added)."""
    types = (NodeType("gpu_spot", "spot", 0.16, 1, 8, 2, 8), NodeType("gpu_ondemand", "on_demand", 0.53, 1, 8, 8, 8))
    market = MarketModel(types, launch_delay_s=60, preemption_rate_per_hour=0.0)
    trace = [TraceJob("short-a", 0, 1800), TraceJob("short-b", 0, 1800), TraceJob("long", 1, 8 * 3600)]
    on = BudgetConfig(min_workers=0, max_workers=8, cooldown_s=60, idle_timeout_s=120)
    off = BudgetConfig(min_workers=0, max_workers=8, cooldown_s=60, idle_timeout_s=120, max_moves_per_hour=0)
    moved, stayed = simulate(trace, market, on), simulate(trace, market, off)
    assert moved.moves == {"spot_return": 1} and stayed.moves == {}
    assert moved.finished == stayed.finished == 3
    assert moved.cost_usd < stayed.cost_usd - 2.0  # ~7 h at 0.16 instead of 0.53
    assert moved.cost_by_kind_usd["on_demand"] < 0.53 * 1.0  # the on-demand node went after ~30 min


def test_an_elastic_gang_starts_smaller_works_at_its_size_and_grows_into_freed_room():
    """Two one-GPU nodes held all along: a rigid one-worker job takes one, the elastic {1..2} job
    starts at 1 (half its speed: 600 s of its 1,200 s of work at 2 is 300 s by then), grows to 2 when
    the other ends (a move: 60 s added) and ends at 600 + (1,200 - 300 + 60) = 1,560 s — as a rigid
    2-worker gang it would wait for both nodes and end at 1,800 s."""
    market = MarketModel(TYPES, launch_delay_s=60, move_overhead_s=60.0)
    pool = {"gpu_ondemand": 2}
    rigid_one = TraceJob("a", 0, 600)
    e = simulate([rigid_one, TraceJob("b", 0, 1200, workers=2, min_workers=1)], market, CFG, fixed_pool=pool)
    assert e.finished == 2 and e.moves == {"elastic_grow": 1} and e.makespan_s == pytest.approx(1560)
    r = simulate([rigid_one, TraceJob("b", 0, 1200, workers=2)], market, CFG, fixed_pool=pool)
    assert r.finished == 2 and r.moves == {} and r.makespan_s == pytest.approx(1800)
    # not before the grow interval: the same trace with a grow interval longer than the run never grows
    late = simulate([rigid_one, TraceJob("b", 0, 1200, workers=2, min_workers=1)], market, CFG, fixed_pool=pool,
                    grow_interval_s=10_000)
    assert late.moves == {} and late.makespan_s == pytest.approx(2400)


def test_a_trace_line_may_make_a_gang_elastic_and_a_bad_min_is_named(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"arrival_s": 0, "duration_s": 60, "workers": 4, "min_workers": 2}\n')
    assert load(p)[0].min_workers == 2
    p.write_text('{"arrival_s": 0, "duration_s": 60, "workers": 2, "min_workers": 3}\n')
    with pytest.raises(TraceError, match=r"t.jsonl:1.min_workers: must be <= workers \(2\)"):
        load(p)


def test_tenant_budgets_are_replayed_as_live():
    """Tenant a's day budget (0.20 USD): its third job arrives with 0.32 USD spent today, waits (and
    is not rented for) until the next UTC day, while tenant b's job at the same instant runs at once;
    a's ``max_usd_per_hour`` serialises its jobs the same way (two at 0.16 USD/h each pass 0.20)."""
    from raycluster.policy.tenants import TenantBudget, TenantQuota, TenantsConfig

    market = MarketModel(TYPES, launch_delay_s=60)
    cfg = BudgetConfig(min_workers=0, max_workers=8, cooldown_s=60, idle_timeout_s=60)
    hour, day = 3600.0, 86400.0
    trace = [TraceJob("a1", 0, hour, spot="only", tenant="a"), TraceJob("a2", 2 * hour, hour, spot="only", tenant="a"),
             TraceJob("a3", 4 * hour, hour, spot="only", tenant="a"),
             TraceJob("b1", 4 * hour, hour, spot="only", tenant="b")]
    budget = TenantsConfig(tenants={"a": TenantQuota(budget_usd=TenantBudget(day=0.20))})
    r = simulate(trace, market, cfg, tenants=budget)
    assert r.finished == 4
    assert day + hour <= r.makespan_s <= day + hour + 300  # a3 ran the next day
    assert r.cost_by_tenant_usd["a"] == pytest.approx(3 * 0.16, rel=1e-6)
    assert r.cost_by_tenant_usd["b"] == pytest.approx(0.16, rel=1e-6)
    free = simulate(trace, market, cfg)  # no tenants config: all done the same day
    assert free.makespan_s < 6 * hour
    # a rate cap: a1..a3 arriving together run one after the other
    together = [TraceJob(f"a{i}", 0, hour, spot="only", tenant="a") for i in range(3)]
    capped = simulate(together, market, cfg, tenants=TenantsConfig(tenants={"a": TenantQuota(max_usd_per_hour=0.2)}))
    assert capped.finished == 3 and capped.makespan_s >= 3 * hour
    assert simulate(together, market, cfg).makespan_s < 2 * hour


def test_raycluster_simulate_takes_a_tenants_file_and_names_a_bad_one(tmp_path, capsys):
    from raycluster.cli.main import main
    from raycluster.policy.trace import load as load_trace

    trace = tmp_path / "t.jsonl"
    trace.write_text(dump_jsonl([TraceJob("a1", 0, 3600, spot="only", tenant="a"),
                                 TraceJob("a2", 7200, 3600, spot="only", tenant="a"),
                                 TraceJob("b1", 7200, 3600, spot="only", tenant="b")]))
    assert [j.tenant for j in load_trace(trace)] == ["a", "a", "b"]
    tenants = tmp_path / "tenants.yaml"
    tenants.write_text("tenants:\n  a: {budget_usd: {day: 0.1}}\n")
    args = ["simulate", str(trace), "--config", str(ROOT / "configs/sim-day.yaml"), "--tenants", str(tenants)]
    assert main(["--json", *args]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["elastic"]["finished"] == 3 and rep["elastic"]["makespan_s"] > 86400  # a2 waited for the next day
    assert main(args) == 0
    assert "jobs' cost by tenant" in capsys.readouterr().out
    tenants.write_text("tenants:\n  a: {budget_usd: {week: 1}}\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--tenants" in err and "week" in err


def test_a_jobs_max_runtime_s_is_what_a_move_for_cost_expects_it_still_runs_as_live():
    """Short jobs: the third one (150 s), on on-demand for want of spot, has run ~30 s when spot frees;
    by its elapsed time alone it would run as long again — a move pays only after ~172 s, so it never
    moves; by its max_runtime_s of 15 minutes it pays at once — as live
    (``Coordinator.budget_running``: ``expected_remaining_s``)."""
    types = (NodeType("gpu_spot", "spot", 0.16, 1, 8, 2, 8), NodeType("gpu_ondemand", "on_demand", 0.53, 1, 8, 8, 8))
    market = MarketModel(types, launch_delay_s=5, preemption_rate_per_hour=0.0, move_overhead_s=3.0)
    cfg = BudgetConfig(min_workers=0, max_workers=8, cooldown_s=5, idle_timeout_s=10)
    short = [TraceJob("a", 0, 25), TraceJob("b", 0, 25)]
    unbounded = simulate([*short, TraceJob("c", 3, 150)], market, cfg, tick_s=2.0)
    bounded = simulate([*short, TraceJob("c", 3, 150, max_runtime_s=900)], market, cfg, tick_s=2.0)
    assert unbounded.moves == {} and bounded.moves == {"spot_return": 1}
    assert bounded.cost_usd < unbounded.cost_usd


def test_at_a_blocked_peak_an_auto_job_on_a_freed_on_demand_node_goes_back_to_spot_one_node_for_one():
    """max_workers 2, both held (a `spot: never` job's on-demand node, a long spot job) and two jobs
    waiting for max_workers: when the never job ends, the first waiting job takes its idle on-demand
    node at once; once its move pays (~172 s run, expected as long again) it moves back to spot while
    the other still waits — the return gives back the node it rents (max_workers held), at less per
    hour — and is placed again on spot. Before, a waiting gang held every spot return back: it ran its
    two hours on on-demand."""
    types = (NodeType("gpu_spot", "spot", 0.16, 1, 8, 8, 8), NodeType("gpu_ondemand", "on_demand", 0.53, 1, 8, 8, 8))
    market = MarketModel(types, launch_delay_s=60, preemption_rate_per_hour=0.0, move_overhead_s=60)
    trace = [TraceJob("never", 0, 300, spot="never"), TraceJob("long", 0, 8 * 3600),
             TraceJob("w1", 10, 2 * 3600), TraceJob("w2", 20, 8 * 3600)]
    cfg = BudgetConfig(min_workers=0, max_workers=2, cooldown_s=60, idle_timeout_s=120)
    r = simulate(trace, market, cfg)
    assert r.moves == {"spot_return": 1} and r.finished == 4 and r.peak_nodes <= 2
    assert r.cost_by_kind_usd["on_demand"] < 0.53 * 0.5  # the never job, then w1's few minutes: not its 2 h
