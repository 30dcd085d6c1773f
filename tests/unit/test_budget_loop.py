"""The BudgetAutoscaler's loop (control/elastic/budget_autoscaler.py: BudgetLoop) driven through a fake of
its one seam (ScalingOps): what it observes, the limits it writes for Ray's autoscaler, the nodes
it gives back, the events and waiting reasons it records. No cluster."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from raycluster.control.elastic.budget_autoscaler import BudgetLoop
from raycluster.labels import RENTAL_LABEL

SPOT, OD = 0.16, 0.53


class FakeOps:
    def __init__(self, cap=None, budget=None, spot_slots=4, od_slots=4):
        self.cfg = {
            "max_workers": 6, "head_node_type": "head", "idle_timeout_minutes": 0.5,
            "provider": {"budget": budget or {"cooldown_s": 30}, "idle_timeout_s": 30, "markets": {"local": {
                "gpu_types": {"T4": {"gpus": 1, "cpus": 2, "capacity": 8, "spot_usd_per_hour": SPOT,
                                     "on_demand_usd_per_hour": OD}}}}},
            "available_node_types": {
                "head": {"resources": {"CPU": 1}, "max_workers": 0},
                "gpu_spot": {"resources": {"CPU": 2, "GPU": 1}, "min_workers": 0, "max_workers": 4,
                             "node_config": {"market": "local", "kind": "spot", "gpu_type": "T4"}},
                "gpu_ondemand": {"resources": {"CPU": 2, "GPU": 1}, "min_workers": 0, "max_workers": 2,
                                 "node_config": {"market": "local", "kind": "on_demand", "gpu_type": "T4"}}}}
        self.cap_usd = cap
        self.slots = {"spot": spot_slots, "on_demand": od_slots}
        self.held: list = []
        self.ray_nodes: list[dict] = []
        self.queue: list[dict] = []
        self.limits: list[dict] = []
        self.events: list[tuple] = []
        self.reasons: list[dict] = []
        self.released: list[tuple] = []
        self.checkpointed: list[str] = []
        self.prices: dict[tuple[str, str], float] = {}
        self.sick: dict[str, str] = {}

    def unhealthy(self):
        return {r: why for r, why in self.sick.items() if any(h.id == r for h in self.held)}

    def config(self):
        return self.cfg

    def original_limits(self, config):
        return {n: {"min_workers": 0, "max_workers": t["max_workers"]}
                for n, t in config["available_node_types"].items() if n != "head"}

    def write_limits(self, limits, idle_timeout_minutes=None):
        self.limits.append(dict(limits))
        self.idle_minutes = idle_timeout_minutes
        return True

    def rentals(self):
        return list(self.held)

    def offers(self, nc):
        kind = nc["kind"]
        return (SPOT if kind == "spot" else OD), self.slots[kind]

    def cap(self):
        return self.cap_usd

    def event(self, action, reason, node_type=None, count=0):
        self.events.append((action, reason))

    def release(self, rental_id, reason, ray_node_id, busy=False):
        self.released.append((rental_id, reason, ray_node_id))
        self.held = [r for r in self.held if r.id != rental_id]

    def release_after_checkpoint(self, rental_id, reason, ray_node_id, wait_s=None, cause="budget"):
        self.checkpointed.append(rental_id)
        self.causes = getattr(self, "causes", []) + [(rental_id, cause)]
        self.release(rental_id, reason, ray_node_id, busy=True)
        return []

    def checkpoint_now(self, rental_id, reason, cause="budget"):
        self.checkpointed.append(rental_id)
        return {}

    def reprice(self):
        changed = []
        for i, r in enumerate(self.held):
            new = self.prices.get((r.gpu_type, r.kind))
            if new is not None and abs(new - r.usd_per_hour) > 1e-9:
                changed.append((r.id, r.usd_per_hour, new))
                self.held[i] = SimpleNamespace(**{**vars(r), "usd_per_hour": new})
        return changed

    def nodes(self):
        return self.ray_nodes

    def waiting(self):
        return list(self.queue)

    def running(self):
        return list(getattr(self, "on_nodes", []))

    def set_waiting(self, reasons):
        self.reasons.append(dict(reasons))

    # helpers for the tests
    def rent(self, rid, kind="spot", joined=True, busy=False):
        node_type = "gpu_spot" if kind == "spot" else "gpu_ondemand"
        self.held.append(SimpleNamespace(id=rid, node_type=node_type, kind=kind, gpu_type="T4", state="running",
                                         preempt_deadline=None, usd_per_hour=SPOT if kind == "spot" else OD))
        if joined:
            self.ray_nodes.append({"id": "ray-" + rid, "alive": True, "labels": {RENTAL_LABEL: rid},
                                   "resources_total": {"CPU": 2.0, "GPU": 1.0},
                                   "resources_free": {"CPU": 1.0 if busy else 2.0, "GPU": 0.0 if busy else 1.0}})


def gang(j, bundles=1, **kw):
    return {"job_id": j, "bundles": bundles, "gpus": 1, "cpus": 1, **kw}


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_waiting_gangs_open_spot_limits_and_starting_nodes_are_not_rented_twice():
    ops, clock = FakeOps(), Clock()
    loop = BudgetLoop(ops, clock)
    ops.queue = [gang("a", bundles=2)]
    loop.step()
    # the launch as the type's min too: Ray's autoscaler packs the bundles it is told without the
    # gang's strategy, so only a min makes it rent what the policy decided
    assert ops.limits[-1] == {"gpu_spot": (2, 2), "gpu_ondemand": (0, 0)}
    assert ("scale_up", "1 gang(s) waiting") in ops.events
    # Ray's autoscaler rented them; not joined yet: their room counts, nothing more is asked
    ops.rent("r1", joined=False)
    ops.rent("r2", joined=False)
    clock.t += 2
    loop.step()
    assert ops.limits[-1] == {"gpu_spot": (0, 2), "gpu_ondemand": (0, 0)}
    assert ops.idle_minutes == pytest.approx((30 + 30) / 60)  # Ray's idle release only as a backstop


def test_at_the_cap_the_gang_waits_with_the_reason_and_the_event_is_written_once():
    ops, clock = FakeOps(cap=0.4), Clock()
    loop = BudgetLoop(ops, clock)
    ops.rent("r1", busy=True)
    ops.rent("r2", busy=True)
    ops.queue = [gang("big", bundles=2), gang("small")]
    for _ in range(3):
        loop.step()
        clock.t += 2
    assert ops.limits[-1] == {"gpu_spot": (0, 2), "gpu_ondemand": (0, 0)}  # held, nothing more
    assert ops.reasons == [{"big": "budget 0.32/0.40 USD/h, needs 0.32 more",
                            "small": "behind a gang waiting for budget or max_workers"}]
    assert ops.events == [("blocked", "budget 0.32/0.40 USD/h: big needs 2 gpu_spot at 0.32")]


def test_no_spot_offered_falls_back_to_on_demand():
    ops, clock = FakeOps(spot_slots=0), Clock()
    loop = BudgetLoop(ops, clock)
    ops.queue = [gang("a")]
    loop.step()
    assert ops.limits[-1] == {"gpu_spot": (0, 0), "gpu_ondemand": (1, 1)}
    assert ("fallback", "a: on-demand (no spot node offered)") in ops.events


def test_a_lowered_cap_sheds_nodes_within_one_pass_idle_first():
    ops, clock = FakeOps(cap=1.0), Clock()
    loop = BudgetLoop(ops, clock)
    ops.rent("busy1", busy=True)
    ops.rent("od", kind="on_demand", busy=True)
    ops.rent("idle1")
    loop.step()
    assert ops.released == []
    ops.cap_usd = 0.5  # (raycluster budget set 0.5): 0.85 held
    clock.t += 2
    loop.step()
    loop.join()
    assert [r[0] for r in ops.released] == ["idle1", "od"] and ops.released[0][2] == "ray-idle1"
    assert ops.checkpointed == ["od"]  # the busy one: its gangs checkpoint before it goes, the idle one not
    clock.t += 2
    loop.step()
    assert ops.limits[-1]["gpu_ondemand"] == (0, 0)  # given back: Ray rents no other
    assert [a for a, _r in ops.events].count("shed") == 1


def test_idle_nodes_go_after_the_cooldown_never_below_min_workers():
    ops, clock = FakeOps(budget={"cooldown_s": 30, "min_workers": 1}), Clock()
    loop = BudgetLoop(ops, clock)
    for r in ("a", "b", "c"):
        ops.rent(r)
    loop.step()  # idle clocks start; utilisation 0 starts the low-util clock
    clock.t += 20
    loop.step()
    assert ops.released == []  # idle 20 s < 30 s
    clock.t += 15
    loop.step()
    assert len(ops.released) == 2 and len(ops.held) == 1
    assert ops.limits[-1] == {"gpu_spot": (1, 1), "gpu_ondemand": (0, 0)}  # min kept, as Ray's min too


def test_a_failing_release_does_not_stop_the_pass():
    ops, clock = FakeOps(cap=0.1), Clock()
    ops.rent("x")

    def boom(*a):
        raise RuntimeError("market down")

    ops.release = boom
    loop = BudgetLoop(ops, clock)
    loop.step()
    assert ops.limits[-1] == {"gpu_spot": (0, 1), "gpu_ondemand": (0, 0)}  # still held: its limit stays


def test_a_spot_price_rise_past_the_cap_sheds_within_the_same_pass_checkpointing_busy_nodes_first():
    ops, clock = FakeOps(cap=0.6), Clock()
    loop = BudgetLoop(ops, clock)
    ops.rent("s1", busy=True)
    ops.rent("s2", busy=True)
    ops.rent("s3", busy=True)
    loop.step()
    assert ops.released == [] and loop.last["committed_usd_per_hour"] == pytest.approx(0.48)
    ops.prices[("T4", "spot")] = 0.25  # the spot price rises: 0.75 held > 0.6
    clock.t += 2
    d = loop.step()
    loop.join()
    assert len(d.release) == 1 and d.release[0][1].startswith("shed: held set 0.75 > budget 0.60")
    gone = d.release[0][0]
    assert ops.checkpointed == [gone] and [r[0] for r in ops.released] == [gone]
    assert loop.last["committed_usd_per_hour"] == pytest.approx(0.5)
    assert any(a == "shed" for a, _r in ops.events)
    clock.t += 2
    loop.step()
    loop.join()
    assert len(ops.released) == 1  # within the cap now: nothing more shed
    assert ops.limits[-1] == {"gpu_spot": (0, 2), "gpu_ondemand": (0, 0)}  # Ray rents no replacement


def test_a_node_being_given_back_is_not_counted_again_while_its_gangs_checkpoint():
    ops, clock = FakeOps(cap=0.6), Clock()
    loop = BudgetLoop(ops, clock)
    for r in ("s1", "s2", "s3"):
        ops.rent(r, busy=True)
    gate = __import__("threading").Event()
    real = ops.release_after_checkpoint

    def slow(*a, **kw):
        gate.wait(10)
        return real(*a, **kw)

    ops.release_after_checkpoint = slow
    ops.prices[("T4", "spot")] = 0.25
    first = loop.step()
    clock.t += 2
    second = loop.step()  # the first shed node still checkpointing: the pass sees 0.5 held, sheds nothing more
    # and the limit Ray's autoscaler reads still counts it, so Ray does not stop it before its gangs saved
    assert ops.limits[-1] == {"gpu_spot": (0, 3), "gpu_ondemand": (0, 0)}
    gate.set()
    loop.join()
    assert ops.causes == [(first.release[0][0], "budget")]  # a shed moves its gangs with cause budget
    assert len(first.release) == 1 and second.release == []
    assert [r[0] for r in ops.released] == [first.release[0][0]]


def test_gangs_on_a_node_with_a_preemption_notice_are_asked_to_checkpoint_once():
    ops, clock = FakeOps(), Clock()
    loop = BudgetLoop(ops, clock)
    ops.rent("s1", busy=True)
    ops.rent("s2", busy=True)
    loop.step()
    assert ops.checkpointed == []
    ops.held[0].preempt_deadline = clock.t + 30
    for _ in range(3):
        clock.t += 2
        loop.step()
    assert ops.checkpointed == ["s1"]


def test_an_unhealthy_rented_node_is_given_back_and_replaced():
    """(Issue "health": where renting landed, an unhealthy rented node is released and replaced.)"""
    ops, clock = FakeOps(), Clock()
    loop = BudgetLoop(ops, clock)
    ops.rent("r1", busy=True)
    ops.rent("r2", busy=True)
    ops.queue = []
    loop.step()
    assert ops.released == []
    ops.sick = {"r1": "GPU 0: XID error 79"}
    ops.queue = [gang("moved-off-r1")]  # its gang, moved off it, waits for a node again
    clock.t += 2
    loop.step()
    loop.join()
    assert ops.released[0][0] == "r1" and "XID error 79" in ops.released[0][1]
    assert "r1" in ops.checkpointed  # its gangs were asked to checkpoint before it went
    assert ops.causes == [("r1", "node_unhealthy")]  # ... and are moved with that cause, no restart spent
    assert any(a == "release_unhealthy" for a, _r in ops.events)
    # the replacement: the policy no longer counts r1, so a spot node is allowed for the waiting gang
    assert ops.limits[-1]["gpu_spot"][1] >= 2


def test_demand_tells_ray_only_what_changed_and_at_most_the_cap_of_bundles(monkeypatch):
    from raycluster import constants as C
    from raycluster.control.elastic.demand import Demand

    monkeypatch.setattr(C, "DEMAND_MAX_BUNDLES", 3)
    told: list[list[dict]] = []
    d = Demand(told.append)
    read: list[str] = []

    def queued():
        for name, wanted in (("a", True), ("held", False), ("b", True), ("c", True), ("never-read", True)):
            read.append(name)
            yield [{"GPU": 1.0, "name": name}], wanted

    assert d.tell((1,), lambda: [[{"GPU": 1.0, "name": "run"}]], queued)
    assert [b["name"] for b in told[-1]] == ["run", "a", "b"]  # the held-back gang is not asked for
    assert "never-read" not in read  # the queue is read only as far as the cap
    assert not d.tell((1,), lambda: [], lambda: []) and len(told) == 1  # nothing changed: nothing told
    assert d.tell((2,), lambda: [], lambda: []) and told[-1] == []  # nothing left: the request is cleared


def test_a_strict_spread_gang_whose_bundles_fit_one_held_node_gets_its_second_node_from_a_min():
    """Suite run of 2026-12-06: a STRICT_SPREAD pair of half-GPU bundles with one idle spot node held
    waited 180 s — the policy launched one node, but Ray's autoscaler, told the two bundles (which
    fit the held node's free GPU), rented nothing while only the max was raised."""
    ops, clock = FakeOps(), Clock()
    loop = BudgetLoop(ops, clock)
    ops.rent("r1")  # idle, one GPU free
    ops.queue = [gang("pair", bundles=2, gpus=0.5, strict_spread=True)]
    loop.step()
    assert ops.limits[-1]["gpu_spot"] == (2, 2)  # Ray must hold two: it rents the second
    ops.rent("r2", joined=False)  # rented: held (starting) from now on, the min goes back down
    clock.t += 2
    loop.step()
    assert ops.limits[-1]["gpu_spot"] == (0, 2)
