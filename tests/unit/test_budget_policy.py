"""The budget policy (policy/budget.py): situations -> decisions, no cluster."""

from __future__ import annotations

import pytest

from raycluster.policy.budget import (BudgetConfig, BudgetConfigError, BudgetContext, Gang, HeldNode, NodeType,
                                      cheapest_gang_usd_per_hour, decide)

SPOT_T4 = NodeType("gpu_spot", "spot", 0.16, gpus=1, cpus=2, available=8)
OD_T4 = NodeType("gpu_ondemand", "on_demand", 0.53, gpus=1, cpus=2, available=8)
TYPES = (SPOT_T4, OD_T4)
NOW = 10_000.0


def ctx(held=(), waiting=(), types=TYPES, util=None, low_since=None, last_up=None, **cfg):
    return BudgetContext(BudgetConfig(**{"cooldown_s": 60, "idle_timeout_s": 30, **cfg}), tuple(types), tuple(held),
                         tuple(waiting), util, low_since, last_up)


def node(i, t=SPOT_T4, idle_s=0.0, free=0.0, price=None, starting=False):
    return HeldNode(f"n{i}", t.name, t.kind, t.usd_per_hour if price is None else price, free_gpus=free,
                    free_cpus=2 * free, idle_s=idle_s, starting=starting)


def gang(j, bundles=1, gpus=1, cpus=1, **kw):
    return Gang(f"job-{j}", bundles, gpus, cpus, **kw)


@pytest.mark.parametrize("name, context, launch, release, waiting", [
    ("nothing to do", ctx(), {}, [], {}),
    ("a gang waits: spot first", ctx(waiting=[gang(1, bundles=2)]), {"gpu_spot": 2}, [], {}),
    ("two 1-GPU bundles share nothing: 2 GPUs = 2 nodes", ctx(waiting=[gang(1, bundles=2, gpus=1, cpus=0.5)]),
     {"gpu_spot": 2}, [], {}),
    ("CPU-only bundles pack onto one node", ctx(waiting=[gang(1, bundles=2, gpus=0, cpus=1)]), {"gpu_spot": 1}, [], {}),
    ("strict spread: one node per bundle", ctx(waiting=[gang(1, bundles=2, gpus=0, cpus=1, strict_spread=True)]),
     {"gpu_spot": 2}, [], {}),
    ("fits the free room of a held node: nothing launched", ctx(held=[node(1, free=1)], waiting=[gang(1)]), {}, [], {}),
    ("spot: never -> on-demand", ctx(waiting=[gang(1, spot="never")]), {"gpu_ondemand": 1}, [], {}),
    ("preempted twice -> on-demand", ctx(waiting=[gang(1, preemptions=2)]), {"gpu_ondemand": 1}, [], {}),
    ("no spot offered -> on-demand", ctx(waiting=[gang(1)], types=(NodeType("gpu_spot", "spot", 0.16, 1, 2, 0), OD_T4)),
     {"gpu_ondemand": 1}, [], {}),
    ("spot: only and no spot -> waits", ctx(waiting=[gang(1, spot="only")],
                                            types=(NodeType("gpu_spot", "spot", 0.16, 1, 2, 0), OD_T4)),
     {}, [], {"job-1": "no node type offered fits it (no gpu_spot left)"}),
    ("hold at the cap: the gang waits with the reason",
     ctx(held=[node(i) for i in range(3)], waiting=[gang(1, bundles=2)], max_hourly_budget_usd=0.6),
     {}, [], {"job-1": "budget 0.48/0.60 USD/h, needs 0.32 more"}),
    ("queue order kept: a small gang behind a blocked one waits too",
     ctx(held=[node(i) for i in range(3)], waiting=[gang(1, bundles=2), gang(2)], max_hourly_budget_usd=0.7),
     {}, [], {"job-1": "budget 0.48/0.70 USD/h, needs 0.32 more", "job-2": "behind a gang waiting for budget or max_workers"}),
    ("max_workers", ctx(held=[node(1)], waiting=[gang(1, bundles=2)], max_workers=2), {}, [],
     {"job-1": "max_workers 2 reached"}),
    ("spot: never is not placed on a held spot node's free room: an on-demand node is rented",
     ctx(held=[node(1, free=1)], waiting=[gang(1, spot="never")]), {"gpu_ondemand": 1}, [], {}),
    ("spot: never at max_workers behind idle spot nodes: they make room for it",
     ctx(held=[node(1, idle_s=100, free=1), node(2)], waiting=[gang(1, spot="never")], max_workers=2),
     {"gpu_ondemand": 1}, ["n1"], {}),
    ("an idle on-demand node goes at the idle timeout even while utilisation is high",
     ctx(held=[node(1), node(2, t=OD_T4, idle_s=100, free=1)], util=0.5), {}, ["n2"], {}),
    ("... but not while a waiting gang needs on-demand",
     ctx(held=[node(1), node(2, t=OD_T4, idle_s=100, free=1)], util=0.5, waiting=[gang(1, spot="never", gpus=2)]),
     {}, [], {"job-1": "no node type offered fits it"}),
    ("a gang partly fitting on an idle node it cannot afford to keep starts over on fresh ones",
     ctx(held=[node(1, t=OD_T4, idle_s=100, free=1)], waiting=[gang(1, bundles=4)], max_hourly_budget_usd=1.0),
     {"gpu_spot": 4}, ["n1"], {}),
    ("shed on price rise: idle first, then the most expensive",
     ctx(held=[node(1, price=0.5), node(2, price=0.4, idle_s=5), node(3, price=0.3)], max_hourly_budget_usd=0.7),
     {}, ["n2", "n1"], {}),
    ("never below min workers on scale-down",
     ctx(held=[node(i, idle_s=100) for i in range(3)], util=0.0, low_since=NOW - 100, min_workers=2), {}, ["n0"], {}),
    ("release idle after the cooldown of low utilisation",
     ctx(held=[node(1, idle_s=100), node(2, idle_s=100, t=OD_T4)], util=0.1, low_since=NOW - 61), {},
     ["n2", "n1"], {}),
    ("no release before the cooldown (the one idle node is the busy cluster's headroom)",
     ctx(held=[node(1, idle_s=100)], util=0.1, low_since=NOW - 30), {}, [], {}),
    ("busy cluster: idle nodes past the idle timeout go, but the cheapest (its headroom)",
     ctx(held=[node(1), node(2, idle_s=100), node(3, idle_s=100, t=OD_T4), node(4, idle_s=200)], util=0.6), {},
     ["n3", "n4"], {}),
    ("busy cluster with busy_idle_nodes_kept 0: every node idle past the timeout goes",
     ctx(held=[node(1), node(2, idle_s=100), node(4, idle_s=200)], util=0.6, busy_idle_nodes_kept=0), {},
     ["n4", "n2"], {}),
    ("busy cluster: never below min_workers",
     ctx(held=[node(1), node(2, idle_s=100), node(4, idle_s=200)], util=0.6, busy_idle_nodes_kept=0, min_workers=2),
     {}, ["n4"], {}),
    ("busy cluster: a node idle shorter than the timeout stays",
     ctx(held=[node(1), node(2, idle_s=10), node(4, idle_s=20)], util=0.6, busy_idle_nodes_kept=0), {}, [], {}),
    ("no release of a node idle shorter than the idle timeout",
     ctx(held=[node(1, idle_s=10)], util=0.1, low_since=NOW - 100), {}, [], {}),
    ("no release while gangs wait", ctx(held=[node(1, idle_s=100)], waiting=[gang(1, gpus=2)], util=0.1,
                                        low_since=NOW - 100), {}, [], {"job-1": "no node type offered fits it"}),
    ("up to min workers, cheapest first", ctx(min_workers=2), {"gpu_spot": 2}, [], {}),
    ("min workers only within the budget", ctx(min_workers=4, max_hourly_budget_usd=0.5), {"gpu_spot": 3}, [], {}),
    ("busy cluster: one node of headroom", ctx(held=[node(1)], util=0.92), {"gpu_spot": 1}, [], {}),
    ("headroom at most once per cooldown", ctx(held=[node(1)], util=0.92, last_up=NOW - 10), {}, [], {}),
    ("an idle node the gang cannot use makes room for it within the budget",
     ctx(held=[node(1, t=OD_T4, idle_s=100, free=0.5)], waiting=[gang(1, bundles=2, gpus=1, cpus=2, spot="only")],
         max_hourly_budget_usd=0.6), {"gpu_spot": 2}, ["n1"], {}),
    ("no room made from nodes idle shorter than the idle timeout",
     ctx(held=[node(1, t=OD_T4, idle_s=5)], waiting=[gang(1, bundles=2, gpus=1, cpus=2, spot="only")],
         max_hourly_budget_usd=0.6), {}, [], {"job-1": "budget 0.53/0.60 USD/h, needs 0.32 more"}),
    ("no spot left and on-demand past the cap: waits for the budget, saying why",
     ctx(held=[node(1), node(2)], waiting=[gang(1)], max_hourly_budget_usd=0.35,
         types=(NodeType("gpu_spot", "spot", 0.16, 1, 2, 0), OD_T4)), {}, [],
     {"job-1": "budget 0.32/0.35 USD/h: 1 gpu_ondemand cost more than the budget, no gpu_spot left"}),
    ("an on-demand fallback that can never be afforded is skipped for spot",
     ctx(waiting=[gang(1, bundles=4, preemptions=5)], max_hourly_budget_usd=1.0), {"gpu_spot": 4}, [], {}),
    ("a per-type limit sends the rest on-demand",
     ctx(waiting=[gang(1, bundles=3)], types=(NodeType("gpu_spot", "spot", 0.16, 1, 2, 8, max_workers=2), OD_T4)),
     {"gpu_ondemand": 3}, [], {}),
])
def test_policy_table(name, context, launch, release, waiting):
    d = decide(context, NOW)
    assert d.launch == launch, name
    assert [r.node_id for r in d.release] == release, name
    assert d.waiting == waiting, name
    cap = context.config.max_hourly_budget_usd
    if cap is not None:
        assert d.committed_usd_per_hour <= cap + 1e-9, name


@pytest.mark.parametrize("context,launches,releases", [
    (ctx(waiting=[gang(1, bundles=2)]), [("gpu_spot", 2, "waiting_gang")], []),
    (ctx(min_workers=2), [("gpu_spot", 2, "minimum")], []),
    (ctx(held=[node(1)], util=0.92), [("gpu_spot", 1, "headroom")], []),
    (ctx(held=[node(1, price=0.5), node(2, price=0.4, idle_s=5)], max_hourly_budget_usd=0.6), [], [("n2", "shed")]),
    (ctx(held=[node(1, idle_s=100, free=1), node(2)], waiting=[gang(1, spot="never")], max_workers=2),
     [("gpu_ondemand", 1, "waiting_gang")], [("n1", "make_room")]),
    (ctx(held=[node(1), node(2, t=OD_T4, idle_s=100, free=1)], util=0.5), [], [("n2", "idle_on_demand")]),
    (ctx(held=[node(1, idle_s=100)], util=0.1, low_since=NOW - 61), [], [("n1", "idle")]),
])
def test_each_launch_and_release_names_the_rule_that_made_it(context, launches, releases):
    d = decide(context, NOW)
    assert [(x.node_type, x.count, x.cause.value) for x in d.launches] == launches
    assert [(r.node_id, r.cause.value) for r in d.release] == releases


@pytest.mark.parametrize("case,idle_s,by_price,released", [
    # idle_timeout_s 300: an idle on-demand node (0.53 USD/h) is held for what the cheapest spot node
    # (0.16) costs idle for 300 s — 90.6 s; with idle_timeout_by_price off, 300 s like any node
    ("past the price-scaled timeout", 95, True, ["n2"]),
    ("within it", 85, True, []),
    ("by price off: within idle_timeout_s", 95, False, []),
    ("by price off: past idle_timeout_s", 301, False, ["n2"]),
])
def test_an_idle_on_demand_node_is_held_for_what_a_spot_node_costs_idle(case, idle_s, by_price, released):
    d = decide(ctx(held=[node(1), node(2, t=OD_T4, idle_s=idle_s, free=1)], util=0.5, idle_timeout_s=300,
                   idle_timeout_by_price=by_price), NOW)
    assert [r.node_id for r in d.release] == released, (case, d.release)
    if released:
        assert d.release[0].cause.value == "idle_on_demand" and f"on-demand idle {idle_s}s" in d.release[0].reason


def test_idle_timeout_by_price_must_be_a_bool():
    with pytest.raises(BudgetConfigError, match="idle_timeout_by_price must be true or false"):
        BudgetConfig(idle_timeout_by_price="yes")


@pytest.mark.parametrize("case,context,launches,releases", [
    # min_workers is met with the cheapest nodes: an on-demand node idle past the timeout at the floor
    # (the idle rules stop there) is swapped for a spot node rather than held all night
    ("at the floor: swapped for spot", ctx(held=[node(1), node(2, t=OD_T4, idle_s=100, free=1)], util=0.0,
                                          min_workers=2), [("gpu_spot", 1, "minimum")], [("n2", "idle_on_demand")]),
    ("no spot offered: kept", ctx(held=[node(1), node(2, t=OD_T4, idle_s=100, free=1)], util=0.0, min_workers=2,
                                 types=(NodeType("gpu_spot", "spot", 0.16, 1, 2, 0), OD_T4)), [], []),
    ("spot dearer: kept", ctx(held=[node(1), node(2, t=OD_T4, idle_s=100, free=1)], util=0.0, min_workers=2,
                             types=(NodeType("gpu_spot", "spot", 0.60, 1, 2, 8), OD_T4)), [], []),
    ("idle shorter than the timeout: kept", ctx(held=[node(1), node(2, t=OD_T4, idle_s=5, free=1)], util=0.0,
                                               min_workers=2), [], []),
    ("a never gang waits: kept for it", ctx(held=[node(1), node(2, t=OD_T4, idle_s=100, free=0.5)],
                                           waiting=[gang(1, gpus=1, spot="never")], min_workers=2),
     [("gpu_ondemand", 1, "waiting_gang")], []),
])
def test_an_idle_on_demand_node_at_min_workers_is_swapped_for_spot(case, context, launches, releases):
    d = decide(context, NOW)
    assert [(x.node_type, x.count, x.cause.value) for x in d.launches] == launches, case
    assert [(r.node_id, r.cause.value) for r in d.release] == releases, case
    if releases:
        assert "gpu_spot holds min_workers 2 for less" in d.release[0].reason


def test_the_rules_run_in_their_stated_order():
    from raycluster.policy import budget

    assert [r.__name__ for r in budget.RULES] == ["shed", "place_waiting", "return_to_spot", "consolidate", "minimum",
                                                  "headroom", "release_idle_on_demand", "scale_down_idle"]


def test_events_carry_their_reasons():
    d = decide(ctx(held=[node(i) for i in range(3)], waiting=[gang(1, bundles=2)], max_hourly_budget_usd=0.6), NOW)
    assert [(e.action, e.reason) for e in d.events] == [
        ("blocked", "budget 0.48/0.60 USD/h: job-1 needs 2 gpu_spot at 0.32")]
    d = decide(ctx(waiting=[gang(1, preemptions=3), gang(2)], util=0.92), NOW)
    assert d.launch == {"gpu_ondemand": 1, "gpu_spot": 1}
    assert [(e.action, e.reason) for e in d.events] == [
        ("fallback", "job-1: on-demand (preempted 3x)"), ("scale_up", "2 gang(s) waiting, util 0.92")]
    assert d.last_scale_up_at == NOW
    d = decide(ctx(held=[node(1, price=0.9)], max_hourly_budget_usd=0.5), NOW)
    assert d.events[0].action == "shed" and "0.90 > budget 0.50" in d.events[0].reason and d.committed_usd_per_hour == 0


def test_low_util_clock_starts_and_resets():
    assert decide(ctx(util=0.1), NOW).low_util_since == NOW
    assert decide(ctx(util=0.1, low_since=NOW - 5), NOW).low_util_since == NOW - 5
    assert decide(ctx(util=0.5, low_since=NOW - 5), NOW).low_util_since is None


@pytest.mark.parametrize("budget", [0.2, 0.5, 1.0, 2.0, 5.0])
def test_a_burst_never_commits_past_the_cap(budget):
    """A stream of decisions over a growing held set: the cap is never exceeded."""
    held: list[HeldNode] = []
    waiting = [gang(i, bundles=1 + i % 3, spot="never" if i % 5 == 0 else "auto") for i in range(50)]
    for step in range(20):
        d = decide(ctx(held=held, waiting=waiting, max_hourly_budget_usd=budget), NOW + step)
        assert d.committed_usd_per_hour <= budget + 1e-9
        types = {t.name: t for t in TYPES}
        for name, count in d.launch.items():
            held += [node(len(held) + k, t=types[name]) for k in range(count)]
        assert sum(n.usd_per_hour for n in held) <= budget + 1e-9
        waiting = waiting[1:]


def test_cheapest_gang_rate_for_submit_checks():
    assert cheapest_gang_usd_per_hour(TYPES, gang(1, bundles=4)) == pytest.approx(0.64)
    assert cheapest_gang_usd_per_hour(TYPES, gang(1, bundles=2, spot="never")) == pytest.approx(1.06)
    assert cheapest_gang_usd_per_hour(TYPES, gang(1, gpus=2)) is None


@pytest.mark.parametrize("kw, field", [
    ({"min_workers": -1}, "min_workers"), ({"min_workers": 5, "max_workers": 4}, "min_workers"),
    ({"max_hourly_budget_usd": "8"}, "max_hourly_budget_usd"), ({"max_hourly_budget_usd": -1}, "max_hourly_budget_usd"),
    ({"busy_idle_nodes_kept": -1}, "busy_idle_nodes_kept"), ({"scale_up_util": 1.5}, "scale_up_util"), ({"scale_down_util": 0.9}, "scale_down_util"),
    ({"cooldown_s": -1}, "cooldown_s"), ({"max_hourly_budget_usd": float("inf")}, "max_hourly_budget_usd"),
])
def test_bad_settings_name_the_field(kw, field):
    with pytest.raises(BudgetConfigError) as e:
        BudgetConfig(**kw)
    assert e.value.field == field


def test_kind_markers_keep_only_and_never_gangs_on_their_kind_of_node(tmp_path):
    """Every rented node type carries its kind's marker resource; a spot: only/never gang's bundles
    ask for it, so the Coordinator's placement (and Ray's) never puts it on the other kind."""
    from raycluster.policy.budget import with_kind
    from raycluster.policy.placement import infeasible_reason, place
    from raycluster.provision.autoscaling import ElasticConfig, autoscaling_config, elastic_nodes

    cfg = ElasticConfig(node_types={
        "gpu_spot": {"market": "local", "kind": "spot", "gpu_type": "T4", "max_workers": 1},
        "gpu_ondemand": {"market": "local", "kind": "on_demand", "gpu_type": "T4", "max_workers": 1}})
    config = autoscaling_config(cfg, cluster_id="x", state_dir=tmp_path, head_address="127.0.0.1:1",
                                dashboard_url="http://127.0.0.1:2", auth_mode="disabled", auth_token_path=None,
                                head_cpus=1)
    types = config["available_node_types"]
    assert types["gpu_spot"]["resources"] == {"CPU": 2, "GPU": 1, "raycluster_spot": 1000.0}
    assert types["gpu_ondemand"]["resources"] == {"CPU": 2, "GPU": 1, "raycluster_on_demand": 1000.0}
    nodes = elastic_nodes(config)  # what submit-time feasibility counts on
    bundle = [{"CPU": 1.0, "GPU": 1.0}]
    assert with_kind(bundle, "auto") == bundle
    assert with_kind(bundle, "only") == [{"CPU": 1.0, "GPU": 1.0, "raycluster_spot": 0.001}]
    for spot, node in (("only", "gpu_spot#0"), ("never", "gpu_ondemand#0")):
        assert place(with_kind(bundle, spot), nodes, "PACK")[0] == [node]
        assert infeasible_reason(with_kind(bundle * 2, spot), "STRICT_SPREAD", nodes) is not None  # one node of it
    assert infeasible_reason(with_kind(bundle * 2, "auto"), "STRICT_SPREAD", nodes) is None
