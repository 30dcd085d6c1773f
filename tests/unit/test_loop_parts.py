"""The Coordinator loop's parts, each driven through its own interface with fakes of what it is
handed (no loop, no cluster): tenancy (quotas, fair share), preemption, node health's evacuation
choices, housekeeping and the loop's per-part timing and guard."""

from __future__ import annotations

import threading

import pytest

from raycluster import constants as C
from raycluster.control.core import CoordinatorCore
from raycluster.control.health.registry import Health
from raycluster.control.housekeeping import Housekeeping
from raycluster.control.preemption import Preemptions
from raycluster.control.tenancy import Tenancy
from raycluster.policy.evacuation import MoveKind
from raycluster.store.lifecycle import Cause, JobState
from tests.fakes import Clock, FakeOps

GPU = {"CPU": 1.0, "GPU": 1.0}


class Rec:
    def __init__(self, id, priority=0, queued_at=0.0, state=JobState.RUNNING, attempt=1, tenant=None):
        self.id, self.priority, self.queued_at, self.state, self.attempt, self.tenant = (
            id, priority, queued_at, state, attempt, tenant)
        self.preempted = 0
        self.attempt_started_at = 0.0


class FakeMoves:
    """What the parts use of ``control/evacuation.Evacuations``."""

    def __init__(self):
        self.moves, self.asked, self.now, self.cancelled, self.ended = {}, [], [], [], []

    def of(self, cause=None):
        return {j: m for j, m in self.moves.items() if cause is None or m[0] == cause}

    def ask(self, rec, cause, reason, wait_s, kind, now, for_job=None):
        self.moves[rec.id] = (cause, kind, for_job)
        self.asked.append((rec.id, cause, kind, for_job))

    def move_now(self, rec, cause, reason, now, note=""):
        self.now.append((rec.id, cause, note))

    def cancel(self, job_id, causes):
        if job_id in self.moves and self.moves[job_id][0] in causes:
            self.moves.pop(job_id)
            self.cancelled.append(job_id)


# ---------------------------------------------------------------------------------------------- tenancy
def test_tenancy_quota_view_changes_and_fair_share_moves(tmp_path):
    t = Tenancy(tmp_path, Clock())
    gangs = [("team-a", [GPU, GPU]), ("team-a", [GPU]), (None, [GPU])]
    assert t.holding(gangs)["team-a"].gpus == 3 and t.holding(gangs)["default"].jobs == 1
    assert t.quota_view(gangs) == (None, False)  # no tenants file: no quotas
    (tmp_path / "tenants.yaml").write_text("tenants:\n  team-a:\n    max_gpus: 4\n")
    view, changed = t.quota_view(gangs)
    assert view is not None and changed
    assert t.quota_view(gangs)[1] is False  # nothing changed since
    assert t.quota_view(gangs[:1])[1] is True  # a gang ended
    moved = t.tick(1000.0, gangs, ["team-b"])
    moved |= t.tick(1600.0, gangs, ["team-b"])  # team-a used the cluster for 10 minutes
    assert "team-a" in moved and t.fair_share["team-b"] > t.fair_share["team-a"]
    assert t.boost_of("team-b") > t.boost_of("team-a")
    again = Tenancy(tmp_path, Clock())  # usage is kept in SQLite
    assert again.usage["team-a"] == pytest.approx(t.usage["team-a"])
    names = {row["tenant"]: row for row in t.view(gangs, ["team-b", "team-b"])["tenants"]}
    assert names["team-a"]["holding"]["gpus"] == 3 and names["team-b"]["queued"] == 2


# ---------------------------------------------------------------------------------------------- preemption
@pytest.fixture
def preemption(monkeypatch):
    monkeypatch.setattr(C, "PREEMPT_AFTER_S", 10.0)
    monkeypatch.setattr(C, "PREEMPT_CHECK_INTERVAL_S", 0.0)
    moves = FakeMoves()
    hi = Rec("hi", priority=9, queued_at=0.0, state=JobState.PENDING)
    running = {"lo": Rec("lo", priority=1), "mid": Rec("mid", priority=5)}
    placed = [(running["lo"], ["n0"]), (running["mid"], ["n1"])]
    renting = {"yes": False}
    forgot = []
    p = Preemptions(moves, job=running.__getitem__, waiter=lambda j: (hi, [GPU], "PACK") if j == "hi" else None,
                    placed_gangs=lambda: placed, preemptible_bundles=lambda rec: [GPU],
                    recent_preemptions=lambda ids, since: {}, newest_checkpoint_at=lambda jid: None,
                    free=lambda: {"n0": {"CPU": 0.0, "GPU": 0.0}, "n1": {"CPU": 0.0, "GPU": 0.0}},
                    may_rent_for=lambda _j: renting["yes"], forget_queue=lambda: forgot.append(1))
    return p, moves, renting, forgot


def test_preemption_asks_the_lowest_victim_once_and_waits_quietly(preemption):
    p, moves, renting, forgot = preemption
    p.tick(20.0)
    assert not moves.asked  # nobody is blocked
    p.blocked = "hi"
    p.tick(5.0)
    assert not moves.asked  # blocked for less than PREEMPT_AFTER_S
    renting["yes"] = True
    p.tick(20.0)
    assert not moves.asked  # the autoscaler may still rent room for it
    renting["yes"] = False
    p.tick(21.0)
    assert moves.asked == [("lo", Cause.PREEMPTED, MoveKind.REQUEUE, "hi")]
    p.tick(22.0)
    assert len(moves.asked) == 1  # one preemption in flight at a time
    moved = type("M", (), {"cause": Cause.PREEMPTED, "for_job": "hi"})()
    moves.moves.clear()
    p._moved(moved, 23.0)  # (the mechanism tells every part of a move it ended)
    assert forgot and p.blocked == "hi"
    p.tick(24.0)
    assert len(moves.asked) == 1  # quiet: admission places hi first


# ---------------------------------------------------------------------------------------------- health
class Nodes:
    def __init__(self, ids):
        self.list = [{"id": i, "alive": True, "address": f"10.0.0.{k}", "is_head": False, "labels": {},
                      "resources_total": {"CPU": 2.0, "GPU": 1.0}} for k, i in enumerate(ids)]

    def nodes(self, _max_age_s=0.0):
        return self.list

    def forget(self):
        pass


class Monitors:
    def __init__(self):
        self.started = []

    def ensure_monitor(self, node_id, coordinator, disk_path):
        self.started.append(node_id)
        return node_id


class Notes:
    def emit(self, *a, **kw):
        return 0


def test_health_moves_gangs_off_a_drained_node_only_where_they_fit(tmp_path):
    clock, moves, monitors, changed = Clock(), FakeMoves(), Monitors(), []
    gangs = [(Rec("a"), ["n0"]), (Rec("b"), ["n1"])]
    room = {"a": True, "b": False}
    h = Health(tmp_path, nodes=Nodes(["n0", "n1", "n2"]), ops=monitors, handle=object(), clock=clock,
               notifier=Notes(), evacuations=moves, placed_gangs=lambda: gangs,
               room_elsewhere=lambda jid, _excluded: room[jid], excluded_changed=lambda: changed.append(1),
               wake=lambda: None, lock=threading.RLock(), guard=lambda _w, fn, *a: fn(*a) or True)
    h.tick(clock.t)
    assert sorted(monitors.started) == ["n0", "n1", "n2"]
    h.drain("n0", "maintenance")
    h.drain("n1", "maintenance")
    assert h.excluded() == {"n0", "n1"} and changed
    clock.t += 2
    h.tick(clock.t)
    # a can go elsewhere: asked to checkpoint, then moved; b would not fit anywhere: it stays
    assert moves.asked == [("a", Cause.NODE_DRAINED, MoveKind.RECOVER, None)]
    h.undrain("n0")
    clock.t += 2
    h.tick(clock.t)
    assert moves.cancelled == ["a"]  # its node is back: no longer moved


# ---------------------------------------------------------------------------------------------- the loop
def test_housekeeping_removes_orphaned_groups_and_pins_packages(tmp_path):
    from raycluster.store.jobs import JobStore

    class Ops:
        removed, pinned = [], []

        def our_pg_names(self):
            return ["raycluster-job-x-a1"]

        def remove_pg_by_name(self, name):
            self.removed.append(name)

        def pin_uris(self, uris, ttl_s):
            self.pinned.append(list(uris))

    ops = Ops()
    hk = Housekeeping(JobStore(tmp_path / "jobs.db"), ops, packages=lambda: {"gcs://_ray_pkg_a.zip"})
    hk.tick(1e9)
    assert ops.removed == ["raycluster-job-x-a1"] and ops.pinned == [["gcs://_ray_pkg_a.zip"]]


def test_a_failing_part_is_logged_timed_and_the_pass_goes_on(tmp_path, monkeypatch):
    ops, clock = FakeOps(), Clock()
    core = CoordinatorCore(tmp_path, ops, clock=clock)

    def boom(_now):
        raise RuntimeError("a broken part")

    monkeypatch.setattr(core.health, "tick", boom)
    jid = core.submit({"name": "j", "entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 1}})["id"]
    for _ in range(4):
        clock.t += 0.5
        core.reconcile_once()
    assert core.get(jid)["state"] == "RUNNING"  # admission ran after the broken part, every pass
    parts = core.timings.view()
    assert parts["health"]["failures"] == 4 and parts["admission"]["calls"] >= 1 and parts["jobs"]["calls"] == 4
    assert core.metrics_snapshot()["loop_parts"]["health"]["failures"] == 4
