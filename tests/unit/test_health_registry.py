"""The Coordinator's health registry driven by a fake RayOps and an injectable clock (no cluster):
monitors started per node, heartbeats → verdicts, a silent node unhealthy within two intervals,
a fault → its gang checkpoints (asked) and moves, no restart spent, placed off the node; drain and
undrain by hand (kept in SQLite); an unhealthy node used again after it recovered."""

from __future__ import annotations

import pytest

from raycluster import constants as C
from raycluster.control.core import CoordinatorCore
from raycluster.errors import JobNotFound
from tests.fakes import Clock, FakeOps


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "HEALTH_INTERVAL_S", 2.0)
    monkeypatch.setattr(C, "HEALTH_EVACUATE_WAIT_S", 3.0)
    monkeypatch.setattr(C, "HEALTH_RECOVER_S", 10.0)
    ops, clock = FakeOps(), Clock()
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    core.health_enabled = True
    return core, ops, clock


def beat(core, clock, nodes=("n0", "n1", "n2"), **fault):
    for n in nodes:
        gpus = [{"index": 0, "util_pct": 10, "mem_used_mb": 100, "mem_total_mb": 1000, "temp_c": 50,
                 **({"xids": [fault["xid"]]} if "xid" in fault and n == fault.get("node") else {})}]
        core.heartbeat({"node_id": n, "at": clock.t, "cpu_pct": 5, "load1": 0.1, "cpus": 2, "mem_pct": 30,
                        "disk_free_pct": 60, "gpus": gpus})


def run(core, clock, seconds, dt=0.5, **beat_kw):
    end = clock.t + seconds
    while clock.t < end:
        clock.t += dt
        if beat_kw.get("nodes", ()) != ():
            beat(core, clock, **beat_kw)
        core.reconcile_once()


def states(core):
    return {v["node_id"]: v["state"] for v in core.health_view()}


def test_monitors_verdicts_and_a_silent_node(env):
    core, ops, clock = env
    run(core, clock, 2)
    assert sorted(ops.monitors) == ["n0", "n1", "n2"]  # one per node
    beat(core, clock)
    run(core, clock, 1)
    assert states(core) == {"n0": "healthy", "n1": "healthy", "n2": "healthy"}
    view = {v["node_id"]: v for v in core.health_view()}
    assert view["n0"]["score"] == pytest.approx(5 + 10 * 3) and view["n0"]["sample"]["gpus"][0]["mem_pct"] == 10.0
    # n2 goes silent: unhealthy within two intervals (4 s here), excluded from admission
    run(core, clock, 4.0, nodes=("n0", "n1"))
    assert states(core)["n2"] == "unhealthy"
    assert "no heartbeat" in {v["node_id"]: v for v in core.health_view()}["n2"]["reasons"][0]
    assert core.excluded_nodes() == {"n2"}
    jid = core.submit({"name": "j", "entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 1}})["id"]
    run(core, clock, 1, nodes=("n0", "n1"))
    assert ops.pgs[f"rc-{jid}-a1"].exclude == ["n2"]  # Ray keeps its bundles off n2 too


def test_a_fault_moves_the_gang_checkpoint_first_without_spending_a_restart(env):
    core, ops, clock = env
    beat(core, clock)
    jid = core.submit({"name": "j", "entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 1}})["id"]
    run(core, clock, 1, nodes=("n0", "n1", "n2"))
    assert core.get(jid)["state"] == "RUNNING" and core.attempts[jid].nodes == ["n0"]
    run(core, clock, 1, nodes=("n0", "n1", "n2"), xid=79, node="n0")  # an XID on n0: unhealthy at once
    assert states(core)["n0"] == "unhealthy" and core.get(jid)["state"] == "RUNNING"
    assert core.checkpoint_wanted(jid, 1)  # its ctx.should_checkpoint says yes once
    run(core, clock, 4, nodes=("n0", "n1", "n2"), xid=79, node="n0")  # no newer checkpoint came: moved at the wait
    job = core.get(jid)
    moved = [t for t in job["transitions"] if t["cause"] == "node_unhealthy"]
    assert len(moved) == 1 and "XID error 79" in moved[0]["reason"]
    assert job["system_restarts"] == 0 and job["attempt"] == 2
    assert ops.pgs[f"rc-{jid}-a2"].exclude == ["n0"]


def test_drain_and_undrain_by_hand_are_kept(env):
    core, ops, clock = env
    beat(core, clock)
    run(core, clock, 1, nodes=("n0", "n1", "n2"))
    out = core.drain("n1", "maintenance")
    assert out["drained"] and out["excluded"] and out["drain_reason"] == "maintenance"
    again = CoordinatorCore(core.state_dir, FakeOps(), clock=clock)  # a restart keeps it
    assert again.excluded_nodes() == {"n1"}
    with pytest.raises(JobNotFound):
        core.drain("nope")
    core.undrain("n1")
    assert core.excluded_nodes() == set()
    assert CoordinatorCore(core.state_dir, FakeOps(), clock=clock).excluded_nodes() == set()


def test_an_unhealthy_node_is_used_again_once_healthy_for_a_while(env):
    core, ops, clock = env
    beat(core, clock)
    run(core, clock, 1, nodes=("n0", "n1", "n2"))
    core.heartbeat({"node_id": "n1", "at": clock.t, "mem_pct": 99, "disk_free_pct": 50})
    clock.t += 0.5
    core.reconcile_once()
    assert states(core)["n1"] == "degraded"  # one failed check
    for _ in range(2):
        clock.t += 0.5
        core.heartbeat({"node_id": "n1", "at": clock.t, "mem_pct": 99, "disk_free_pct": 50})
        core.reconcile_once()
    assert states(core)["n1"] == "unhealthy" and "n1" in core.excluded_nodes()
    run(core, clock, 5, nodes=("n0", "n1", "n2"))
    assert states(core)["n1"] == "healthy" and "n1" in core.excluded_nodes()  # not yet: HEALTH_RECOVER_S
    run(core, clock, 6, nodes=("n0", "n1", "n2"))
    assert "n1" not in core.excluded_nodes()


def test_a_silent_nodes_gang_moves_at_once(env):
    core, ops, clock = env
    beat(core, clock)
    jid = core.submit({"name": "j", "entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 1}})["id"]
    run(core, clock, 1, nodes=("n0", "n1", "n2"))
    assert core.attempts[jid].nodes == ["n0"]
    run(core, clock, 3.5, nodes=("n1", "n2"))  # n0 silent for 1.5 intervals: presumed dead
    job = core.get(jid)
    moved = [t for t in job["transitions"] if t["cause"] == "node_unhealthy"]
    assert len(moved) == 1 and "no heartbeat" in moved[0]["reason"] and job["system_restarts"] == 0
    assert not core.checkpoint_wanted(jid, 1)  # nobody waited for a checkpoint that cannot come
