"""Moves for cost (issue "Spend less", items 2 and 3): the break-even and the expected remaining
runtime as tables, the budget policy's spot-return and consolidation rules over a context (no
cluster), and the BudgetAutoscaler's loop moving the gangs with their cause through its seam's fake."""

from __future__ import annotations

import pytest

from raycluster.control.elastic.budget_autoscaler import BudgetLoop
from raycluster.policy.budget import (BudgetConfig, BudgetContext, Gang, HeldNode, NodeType, ReleaseCause, RunningGang,
                                     decide)
from raycluster.policy.cost_moves import expected_remaining_s, move_pays
from tests.unit.test_budget_loop import OD, SPOT, Clock, FakeOps


@pytest.mark.parametrize("elapsed_s,max_runtime_s,expect", [
    (600, None, 600),  # as long again as it has run
    (600, 3600, 3000),  # up to its limit
    (4000, 3600, 0),
    (-5, None, 0),
])
def test_expected_remaining_table(elapsed_s, max_runtime_s, expect):
    assert expected_remaining_s(elapsed_s, max_runtime_s) == expect


@pytest.mark.parametrize("old,new,remaining_s,move_s,pays", [
    (0.53, 0.16, 3600, 120, True),  # saves 0.37, the move costs 0.53 * 120 s = 0.018
    (0.53, 0.16, 120, 120, False),  # 0.012 saved < 0.018
    (0.53, 0.16, 180, 120, True),  # break-even ~172 s
    (0.53, 0.16, 170, 120, False),
    (0.16, 0.16, 1e6, 0, False),  # no saving: never
    (0.53, 0.60, 1e6, 120, False),  # spot dearer: never
    (0.53, 0.16, 10, 0, True),  # a free move pays as soon as it saves
])
def test_move_break_even_table(old, new, remaining_s, move_s, pays):
    ok, saving, cost = move_pays(old, new, remaining_s, move_s)
    assert ok is pays and saving == pytest.approx((old - new) * remaining_s / 3600) and cost == pytest.approx(
        old * move_s / 3600)


TYPES = (NodeType("gpu_spot", "spot", SPOT, 1, 2, available=2, max_workers=3),
         NodeType("gpu_od", "on_demand", OD, 1, 2, available=2, max_workers=2))


def ctx(held, running, waiting=(), cap=None, types=TYPES, **cfg):
    return BudgetContext(BudgetConfig(max_hourly_budget_usd=cap, **cfg), types, tuple(held), tuple(waiting),
                         running=tuple(running))


def od(nid="od1", free_gpus=0.0):
    return HeldNode(nid, "gpu_od", "on_demand", OD, free_gpus=free_gpus, free_cpus=1.0)


TWO_GPU_OD = (TYPES[0], NodeType("gpu_od2", "on_demand", 2 * OD, 2, 4, available=2, max_workers=2))


def od2(nid="od1"):
    return HeldNode(nid, "gpu_od2", "on_demand", 2 * OD, free_gpus=0.0, free_cpus=2.0)


def on(job="j", rentals=("od1",), remaining_s=3600.0, **kw):
    g = Gang(job, kw.pop("bundles", 1), 1.0, 1.0, spot=kw.pop("spot", "auto"), preemptions=kw.pop("preemptions", 0))
    return RunningGang(g, tuple(rentals), kw.pop("usd_per_hour", OD), remaining_s, **kw)


@pytest.mark.parametrize("case,held,running,kw,released", [
    ("spot offered, pays", [od()], [on()], {}, ["od1"]),
    ("short job: the move does not pay", [od()], [on(remaining_s=60)], {}, []),
    ("spot: never", [od()], [on(spot="never")], {}, []),
    ("not preemptible", [od()], [on(preemptible=False)], {}, []),
    ("fell back after spot preemptions", [od()], [on(preemptions=2)], {}, []),
    ("moved for cost this hour already", [od()], [on(moves_last_hour=1)], {}, []),
    ("no spot offered", [od()], [on()], {"types": (TYPES[0].__class__("gpu_spot", "spot", SPOT, 1, 2, 0, 3),
                                                   TYPES[1])}, []),
    ("fits a held spot node's free room (none offered)",
     [od(), HeldNode("s1", "gpu_spot", "spot", SPOT, free_gpus=1.0, free_cpus=2.0, idle_s=5)], [on()],
     {"types": (NodeType("gpu_spot", "spot", SPOT, 1, 2, 0, 3), TYPES[1])}, ["od1"]),
    ("one of its gangs may not move", [od()], [on(), on("k", spot="never")], {}, []),
    ("the spot type at its max_workers", [od()], [on()],
     {"types": (NodeType("gpu_spot", "spot", SPOT, 1, 2, available=2, max_workers=0), TYPES[1])}, []),
    ("a swap within max_workers", [od(), od("od2")], [on(), on("k", rentals=("od2",))], {"max_workers": 2},
     ["od1"]),
    ("within the cap with the node given back", [od()], [on()], {"cap": 0.6}, ["od1"]),
    # a gang waiting for budget or max_workers does not hold back a return that takes neither from it:
    # one fresh spot node for the on-demand node given back, cheaper (at a busy peak, on-demand nodes
    # held for `spot: never` jobs end up running `auto` gangs)
    ("a gang waits for budget: the return frees budget", [od()], [on()],
     {"cap": 0.6, "waiting": [Gang("w", 1, 1.0, 1.0, spot="never")]}, ["od1"]),
    ("a gang waits for max_workers: one node for one", [od()], [on()],
     {"max_workers": 1, "waiting": [Gang("w", 1, 1.0, 1.0, spot="never")]}, ["od1"]),
    # ... but not one that rents more nodes than its gangs leave (2 one-GPU spot nodes for a 2-GPU one)
    ("a gang waits: two spot nodes for one on-demand node", [od2()], [on(bundles=2)],
     {"types": TWO_GPU_OD, "waiting": [Gang("w", 4, 1.0, 1.0, spot="never")], "max_workers": 3}, []),
    ("nothing waits: two spot nodes for one on-demand node", [od2()], [on(bundles=2)],
     {"types": TWO_GPU_OD, "max_workers": 3}, ["od1"]),
    ("idle on-demand: not a move (the idle rules)", [od(free_gpus=1.0)], [], {}, []),
])
def test_spot_return_rule_table(case, held, running, kw, released):
    d = decide(ctx(held, running, **kw), now=0.0)
    got = [r.node_id for r in d.release if r.cause == ReleaseCause.SPOT_RETURN]
    assert got == released, (case, d.release, d.events)
    if released:
        assert any(e.action == "spot_return" and "saves" in e.reason for e in d.events)


def test_one_node_a_pass_and_held_spot_room_is_reserved_not_released_as_idle():
    held = [od(), od("od2"), HeldNode("s1", "gpu_spot", "spot", SPOT, free_gpus=1.0, free_cpus=2.0, idle_s=1e6)]
    running = [on(), on("k", rentals=("od2",))]
    d = decide(ctx(held, running, types=(NodeType("gpu_spot", "spot", SPOT, 1, 2, 0, 3), TYPES[1]), cooldown_s=0,
                   idle_timeout_s=0.0), now=0.0)
    assert [r.node_id for r in d.release if r.cause == ReleaseCause.SPOT_RETURN] == ["od1"]
    assert d.reserved == {"od1": ("s1",)}
    assert "s1" not in [r.node_id for r in d.release]  # its room is taken by the gang moving there


def test_the_loop_moves_the_gangs_with_cause_spot_return_and_keeps_the_spot_node_it_needs():
    ops, clock = FakeOps(spot_slots=0), Clock()
    loop = BudgetLoop(ops, clock)
    ops.rent("od1", kind="on_demand", busy=True)
    ops.rent("s1")  # an idle spot node: the gang fits its room
    ops.on_nodes = [{"job_id": "j", "bundles": 1, "gpus": 1, "cpus": 1, "spot": "auto", "rentals": ["od1"],
                     "usd_per_hour": OD, "remaining_s": 3600.0, "moves_last_hour": 0, "preemptible": True}]
    loop.step()
    loop.join()
    assert ops.causes == [("od1", "spot_return")]
    assert [r for r, _why, _n in ops.released] == ["od1"]
    assert any(a == "spot_return" for a, _r in ops.events)
    # a Coordinator that cannot answer: no spot return that pass, the rest of the pass goes on
    ops.on_nodes = None
    clock.t += 1
    loop.step()


# ---------------------------------------------------------------------------------------------- consolidation
def spot(nid, free_gpus=1.0, usd=SPOT, gpus_total=2):
    return HeldNode(nid, "gpu_spot2", "spot", usd, free_gpus=free_gpus, free_cpus=2.0)


def at(job, node, gpus=1.0, remaining_s=3600.0, **kw):
    g = Gang(job, kw.pop("bundles", 1), gpus, 1.0, spot=kw.pop("spot", "auto"))
    return RunningGang(g, (node,), kw.pop("usd_per_hour", SPOT / 2), remaining_s, **kw)


TWO_GPU = (NodeType("gpu_spot2", "spot", SPOT, 2, 4, available=0, max_workers=4), TYPES[1])


@pytest.mark.parametrize("case,held,running,kw,released", [
    ("two half-used nodes: one empties onto the other", [spot("a"), spot("b", usd=0.2)],
     [at("ja", "a"), at("jb", "b")], {}, ["b"]),  # the dearer one goes
    ("a short job: giving the node back does not pay", [spot("a"), spot("b")],
     [at("ja", "a", remaining_s=60), at("jb", "b", remaining_s=60)], {}, []),
    ("no room elsewhere", [spot("a", free_gpus=0.0), spot("b", free_gpus=0.0)],
     [at("ja", "a", gpus=2), at("jb", "b", gpus=2)], {}, []),
    ("not preemptible", [spot("a"), spot("b")], [at("ja", "a", preemptible=False), at("jb", "b", preemptible=False)],
     {}, []),
    ("moved for cost this hour already", [spot("a"), spot("b")],
     [at("ja", "a", moves_last_hour=1), at("jb", "b", moves_last_hour=1)], {}, []),
    # the dearer on-demand node would go first, but its spot: never gang may not move onto spot room;
    # the auto gang on the spot node may move onto the on-demand node's room (paid already)
    ("spot: never stays off spot room", [spot("a"), od("o", free_gpus=1.0)],
     [at("ja", "a"), at("jo", "o", spot="never", usd_per_hour=OD)], {}, ["a"]),
    ("a gang waits for budget: no move", [spot("a"), spot("b")], [at("ja", "a"), at("jb", "b")],
     {"cap": 0.32, "waiting": [Gang("w", 1, 1.0, 1.0, spot="never")]}, []),
])
def test_consolidation_rule_table(case, held, running, kw, released):
    d = decide(ctx(held, running, types=kw.pop("types", TWO_GPU), **kw), now=0.0)
    got = [r.node_id for r in d.release if r.cause == ReleaseCause.CONSOLIDATE]
    assert got == released, (case, d.release, d.events)
    if released:
        assert any(e.action == "consolidate" and "saves" in e.reason for e in d.events)
        assert d.reserved[released[0]]  # the room it moves to is kept from the idle rules


def test_the_loop_consolidates_with_cause_consolidate():
    ops, clock = FakeOps(spot_slots=0), Clock()
    loop = BudgetLoop(ops, clock)
    ops.rent("s1", busy=True)
    ops.rent("s2", busy=True)
    for n in ops.ray_nodes:  # two 2-GPU spot nodes, one GPU used on each
        n["resources_total"] = {"CPU": 4.0, "GPU": 2.0}
        n["resources_free"] = {"CPU": 3.0, "GPU": 1.0}
    ops.on_nodes = [{"job_id": j, "bundles": 1, "gpus": 1, "cpus": 1, "spot": "auto", "rentals": [n],
                     "usd_per_hour": SPOT / 2, "remaining_s": 3600.0, "moves_last_hour": 0, "preemptible": True}
                    for j, n in (("a", "s1"), ("b", "s2"))]
    loop.step()
    loop.join()
    assert len(ops.causes) == 1 and ops.causes[0][1] == "consolidate"


@pytest.mark.parametrize("budget,field", [
    ({"spot_return_move_s": -1}, "budget.spot_return_move_s"),
    ({"max_moves_per_hour": 1.5}, "budget.max_moves_per_hour"),
    ({"max_moves_per_hour": -1}, "budget.max_moves_per_hour"),
    ({"spot_return_after_s": 1}, "budget.spot_return_after_s"),  # unknown: named, the known keys listed
    ({"idle_timeout_by_price": "no"}, "budget.idle_timeout_by_price"),
])
def test_a_bad_move_setting_in_the_config_is_refused_naming_the_key(budget, field):
    from raycluster.provision.autoscaling import MarketConfigError, budget_config

    with pytest.raises(MarketConfigError) as exc:
        budget_config(budget, idle_timeout_s=60, max_workers=4, max_hourly_budget_usd=None)
    assert exc.value.field == field
    ok = budget_config({"spot_return_move_s": 30, "max_moves_per_hour": 0}, idle_timeout_s=60, max_workers=4,
                       max_hourly_budget_usd=None)
    assert ok.spot_return_move_s == 30 and ok.max_moves_per_hour == 0  # 0: moves for cost off
    assert budget_config({"idle_timeout_by_price": False}, idle_timeout_s=60, max_workers=4,
                         max_hourly_budget_usd=None).idle_timeout_by_price is False
