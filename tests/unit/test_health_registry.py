"""The Coordinator's health registry driven by a fake RayOps and an injectable clock (no cluster):
monitors started per node, heartbeats → verdicts, a silent node unhealthy within two intervals,
a fault → its gang checkpoints (asked) and moves, no restart spent, placed off the node; drain and
undrain by hand (kept in SQLite); an unhealthy node used again after it recovered."""

from __future__ import annotations

import pytest

from raycluster import constants as C
from raycluster.control.core import CoordinatorCore
from raycluster.errors import JobNotFound
from raycluster.policy.recovery import RankStatus
from tests.fakes import Clock, FakeOps


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "HEALTH_INTERVAL_S", 2.0)
    monkeypatch.setattr(C, "HEALTH_EVACUATE_WAIT_S", 3.0)
    monkeypatch.setattr(C, "HEALTH_RECOVER_S", 10.0)
    ops, clock = FakeOps(), Clock()
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    core.health.enabled = True
    return core, ops, clock


def beat(core, clock, nodes=("n0", "n1", "n2"), **fault):
    for n in nodes:
        gpus = [{"index": 0, "util_pct": 10, "mem_used_mb": 100, "mem_total_mb": 1000, "temp_c": 50,
                 **({"xids": [fault["xid"]]} if "xid" in fault and n == fault.get("node") else {})}]
        core.health.heartbeat({"node_id": n, "at": clock.t, "cpu_pct": 5, "load1": 0.1, "cpus": 2, "mem_pct": 30,
                        "disk_free_pct": 60, "gpus": gpus})


def run(core, clock, seconds, dt=0.5, **beat_kw):
    end = clock.t + seconds
    while clock.t < end:
        clock.t += dt
        if beat_kw.get("nodes", ()) != ():
            beat(core, clock, **beat_kw)
        core.reconcile_once()


def states(core):
    return {v["node_id"]: v["state"] for v in core.health.health_view()}


def test_monitors_verdicts_and_a_silent_node(env):
    core, ops, clock = env
    run(core, clock, 2)
    assert sorted(ops.monitors) == ["n0", "n1", "n2"]  # one per node
    beat(core, clock)
    run(core, clock, 1)
    assert states(core) == {"n0": "healthy", "n1": "healthy", "n2": "healthy"}
    view = {v["node_id"]: v for v in core.health.health_view()}
    assert view["n0"]["score"] == pytest.approx(5 + 10 * 3) and view["n0"]["sample"]["gpus"][0]["mem_pct"] == 10.0
    # n2 goes silent: unhealthy within two intervals (4 s here), excluded from admission
    run(core, clock, 4.0, nodes=("n0", "n1"))
    assert states(core)["n2"] == "unhealthy"
    assert "no heartbeat" in {v["node_id"]: v for v in core.health.health_view()}["n2"]["reasons"][0]
    assert core.health.excluded() == {"n2"}
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
    assert core.evacuations.checkpoint_wanted(jid, 1)  # its ctx.should_checkpoint says yes once
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
    out = core.health.drain("n1", "maintenance")
    assert out["drained"] and out["excluded"] and out["drain_reason"] == "maintenance"
    again = CoordinatorCore(core.state_dir, FakeOps(), clock=clock)  # a restart keeps it
    assert again.health.excluded() == {"n1"}
    with pytest.raises(JobNotFound):
        core.health.drain("nope")
    core.health.undrain("n1")
    assert core.health.excluded() == set()
    assert CoordinatorCore(core.state_dir, FakeOps(), clock=clock).health.excluded() == set()


def test_an_unhealthy_node_is_used_again_once_healthy_for_a_while(env):
    core, ops, clock = env
    beat(core, clock)
    run(core, clock, 1, nodes=("n0", "n1", "n2"))
    core.health.heartbeat({"node_id": "n1", "at": clock.t, "gpus": [{"index": 0, "temp_c": 97}]})
    clock.t += 0.5
    core.reconcile_once()
    assert states(core)["n1"] == "degraded"  # one failed check
    for _ in range(2):
        clock.t += 0.5
        core.health.heartbeat({"node_id": "n1", "at": clock.t, "gpus": [{"index": 0, "temp_c": 97}]})
        core.reconcile_once()
    assert states(core)["n1"] == "unhealthy" and "n1" in core.health.excluded()
    run(core, clock, 5, nodes=("n0", "n1", "n2"))
    assert states(core)["n1"] == "healthy" and "n1" in core.health.excluded()  # not yet: HEALTH_RECOVER_S
    run(core, clock, 6, nodes=("n0", "n1", "n2"))
    assert "n1" not in core.health.excluded()


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
    assert not core.evacuations.checkpoint_wanted(jid, 1)  # nobody waited for a checkpoint that cannot come


def host_beat(core, clock, nodes=("n0", "n1", "n2"), **over):
    for n in nodes:
        core.health.heartbeat({"node_id": n, "at": clock.t, "cpu_pct": 100, "load1": 0.1, "cpus": 2, "mem_pct": 30,
                        "disk_free_pct": 60, "gpus": [{"index": 0, "temp_c": 50}], **over})


def test_a_busy_shared_host_moves_nothing_and_is_shown_once_as_the_hosts(env):
    """Issue 20: a burst drove load to 8.9 on 2 cores and every node of the host was judged unhealthy,
    moving gangs no fault touched. Load is never a failure; the host's memory and disk, shared by
    several nodes, are the host's (shown) and move nothing."""
    core, ops, clock = env
    host_beat(core, clock)
    jid = core.submit({"name": "j", "entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 1}})["id"]
    for _ in range(12):  # many samples, well past the failure threshold
        clock.t += 0.5
        host_beat(core, clock, load1=8.9, mem_pct=99, disk_free_pct=0.5)
        core.reconcile_once()
    view = {v["node_id"]: v for v in core.health.health_view()}
    assert {n: v["state"] for n, v in view.items()} == {"n0": "healthy", "n1": "healthy", "n2": "healthy"}
    assert core.health.excluded() == set() and core.get(jid)["state"] == "RUNNING"
    assert not [t for t in core.get(jid)["transitions"] if t["cause"] in ("node_unhealthy", "node_drained")]
    assert view["n0"]["host_shared"] and any("busy: load 8.9" in r for r in view["n0"]["host_reasons"])
    assert any("memory 99%" in r for r in view["n0"]["host_reasons"])


def test_a_node_alone_on_its_host_is_judged_on_its_memory(env):
    core, ops, clock = env
    ops.addresses = {"n0": "10.0.0.1", "n1": "10.0.0.2", "n2": "10.0.0.3"}  # one machine each
    host_beat(core, clock)
    run(core, clock, 1)
    for _ in range(4):
        clock.t += 0.5
        host_beat(core, clock, nodes=("n0", "n2"))
        host_beat(core, clock, nodes=("n1",), mem_pct=99, load1=30)
        core.reconcile_once()
    assert states(core)["n1"] == "unhealthy" and core.health.excluded() == {"n1"}
    assert states(core)["n0"] == "healthy"


def test_no_evacuation_to_nowhere_then_it_moves_once_there_is_room(env):
    """Issue 20: gangs were moved off a node with nowhere to go and sat in PLACING for 120 s."""
    core, ops, clock = env
    beat(core, clock)
    ids = [core.submit({"name": f"j{i}", "entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 1}})["id"]
           for i in range(3)]
    run(core, clock, 1, nodes=("n0", "n1", "n2"))
    assert [core.get(j)["state"] for j in ids] == ["RUNNING"] * 3  # every GPU taken
    on_n0 = next(j for j in ids if core.attempts[j].nodes == ["n0"])
    run(core, clock, 6, nodes=("n0", "n1", "n2"), xid=79, node="n0")  # n0 unhealthy: nowhere to go
    assert states(core)["n0"] == "unhealthy"
    assert core.get(on_n0)["state"] == "RUNNING" and core.get(on_n0)["attempt"] == 1  # stays
    assert not core.evacuations.checkpoint_wanted(on_n0, 1)  # not even asked to checkpoint
    other = next(j for j in ids if j != on_n0)
    ops.finish(core.attempts[other].refs)  # a GPU frees up: now it moves, checkpoint first
    run(core, clock, 1, nodes=("n0", "n1", "n2"), xid=79, node="n0")
    assert core.get(other)["state"] == "SUCCEEDED" and core.evacuations.checkpoint_wanted(on_n0, 1)
    run(core, clock, 4, nodes=("n0", "n1", "n2"), xid=79, node="n0")
    job = core.get(on_n0)
    assert [t["cause"] for t in job["transitions"]].count("node_unhealthy") == 1 and job["system_restarts"] == 0


def test_a_gang_being_placed_gets_a_new_placement_group_when_the_exclusion_changes(env):
    """Issue 20: a group made while a node was excluded kept that exclusion after the node recovered."""
    core, ops, clock = env
    ops.total = {"n0": {"CPU": 2.0, "GPU": 1.0}}  # one node: while it is excluded nothing can be placed
    core.health.heartbeat({"node_id": "n0", "at": clock.t, "gpus": [{"index": 0, "temp_c": 97}]})
    for _ in range(3):
        clock.t += 0.5
        core.health.heartbeat({"node_id": "n0", "at": clock.t, "gpus": [{"index": 0, "temp_c": 97}]})
        core.reconcile_once()
    assert core.health.excluded() == {"n0"}
    ops.auto_ready = False
    jid = core.submit({"name": "j", "entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 1}})["id"]
    core.reconcile_once()
    job = core.store.get(jid)
    assert job.state.value == "PENDING"  # no healthy node has room: admission keeps it queued
    from raycluster.policy.steps import start_step
    core.apply(job, start_step(job, clock.t), clock.t)  # placed as a gang whose node was lost is placed again
    old = core.attempts[jid].pg
    assert old.exclude == ["n0"]
    run(core, clock, 11, nodes=("n0",))  # healthy again for HEALTH_RECOVER_S: used again
    assert core.health.excluded() == set()
    run(core, clock, 0.5, nodes=("n0",))  # the next pass sees its group wait on a stale exclusion
    new = core.attempts[jid].pg
    assert new is not old and old.removed and new.exclude == [] and core.get(jid)["state"] == "PLACING"
    new.ready = True
    run(core, clock, 0.5, nodes=("n0",))
    assert core.get(jid)["state"] == "RUNNING"


def test_a_rank_that_died_with_its_node_makes_the_verdict_at_once(env):
    """Issue 20: Ray's node table said so seconds after the rank's NodeDiedError reached us."""
    core, ops, clock = env
    beat(core, clock)
    jid = core.submit({"name": "j", "entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 1}})["id"]
    run(core, clock, 1, nodes=("n0", "n1", "n2"))
    node = core.attempts[jid].nodes[0]
    ops.finish(core.attempts[jid].refs, RankStatus.SYSTEM_ERROR)  # NodeDiedError; Ray still says alive
    clock.t += 0.1
    core.reconcile_once()
    view = {v["node_id"]: v for v in core.health.health_view()}
    assert view[node]["alive"] and view[node]["state"] == "unhealthy"
    assert any("NodeDiedError" in r for r in view[node]["reasons"])


def _node(nid, alive=True, state="healthy", **kw):
    return {"node_id": nid, "alive": alive, "is_head": False, "address": "127.0.0.1", "rental_id": None,
            "state": state, "score": 1.0, "reasons": [], "host_shared": True, "host_reasons": [], "excluded": False,
            "drained": False, "drain_reason": None, "last_heartbeat_s_ago": 1.0, "sample": None, **kw}


@pytest.mark.parametrize("rows, code, fragment", [
    ([_node("a"), _node("b")], 0, None),
    ([_node("a"), _node("b", state="unhealthy", reasons=["GPU 0: XID error 79"])], 1, "1 node(s) unhealthy"),
    # issue 20: a dead node counted only when alive-and-unhealthy: `raycluster health || page` never paged
    ([_node("a"), _node("b", alive=False, state="unhealthy", reasons=["Ray reports the node dead"])], 1, "(1 dead)"),
    ([_node("a"), _node("b", alive=False, state="unknown")], 1, "(1 dead)"),
    # ... and a node the cluster gave back on purpose is no fault: no page after every scale-down
    ([_node("a"), _node("b", alive=False, state="released", reasons=["released: idle for 60 s"])], 0, None),
    ([_node("a", host_reasons=["busy: load 8.9 on 2 CPUs (> 4 per CPU; not a failure)"]), _node("b")], 0,
     "host 127.0.0.1 (2 nodes): busy: load 8.9"),
])
def test_health_exit_code_pages_for_dead_and_unhealthy_nodes_only(monkeypatch, capsys, rows, code, fragment):
    import types

    from raycluster.cli import connect
    from raycluster.cli.health import cmd_health

    monkeypatch.setattr(connect, "client_for", lambda args: types.SimpleNamespace(health=lambda: rows))
    assert cmd_health(types.SimpleNamespace(json=False)) == code
    out = capsys.readouterr().out
    if fragment:
        assert fragment in out, out


def test_a_rented_node_given_back_on_purpose_reads_released_and_a_lost_one_does_not(tmp_path, monkeypatch):
    import json

    from raycluster.provision.local.record import cluster_dir
    from raycluster.labels import RENTAL_LABEL
    from raycluster.store.rentals import RentalRecord, RentalState, RentalStore

    cluster_dir(tmp_path).mkdir(parents=True)
    (cluster_dir(tmp_path) / "autoscaling.json").write_text(json.dumps({
        "max_workers": 2, "head_node_type": "head", "provider": {"state_dir": str(tmp_path / "prov")},
        "available_node_types": {"head": {"resources": {"CPU": 0}, "max_workers": 0}}}))
    store = RentalStore(tmp_path / "prov" / "rentals.db")
    for rid, reason in (("rent-idle", "idle for 60 s"), ("rent-lost", "lost: the market no longer runs it")):
        store.insert(RentalRecord(id=rid, request_id=rid, market="local", node_type="t", kind="spot", gpu_type="T4",
                                  usd_per_hour=0.16, state=RentalState.RELEASED, created_at=1.0, reason=reason))
    ops, clock = FakeOps(nodes=0), Clock()
    dead = [{"id": f"n-{r}", "alive": False, "is_head": False, "address": "127.0.0.1", "hostname": "h",
             "labels": {RENTAL_LABEL: r}, "resources_total": {}, "resources_free": {}} for r in ("rent-idle", "rent-lost")]
    ops.nodes = lambda: dead
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    view = {v["node_id"]: v for v in core.health.health_view()}
    assert view["n-rent-idle"]["state"] == "released" and view["n-rent-idle"]["reasons"] == ["released: idle for 60 s"]
    assert view["n-rent-lost"]["state"] != "released"  # lost unasked: a fault, it pages


def test_a_host_whose_heartbeats_come_late_gets_longer_before_its_node_is_judged_silent(env):
    """A pegged 2-core box delivered a healthy node's heartbeat 9 s after the last (timeout 7.5 s) and
    the node was given back as unhealthy. Heartbeats that came late lately (n2's: 1.5 s late at a 2 s
    interval) lengthen the timeout of every node of their host by twice that (3 s -> 6 s here; n0
    shares n2's host), at most HEALTH_HEARTBEAT_LAG_CAP_S; a node on a host whose heartbeats came on
    time (n1) is still judged at the timeout."""
    core, ops, clock = env
    ops.addresses.update({"n0": "10.0.0.3", "n1": "10.0.0.2", "n2": "10.0.0.3"})
    beat(core, clock)
    for late in (0.9, 1.5, 1.5, 1.5):  # n0, n1 on time; n2 late (more so as the box gets busier)
        run(core, clock, 2.0, nodes=("n0", "n1"))
        run(core, clock, late, nodes=())
        beat(core, clock, nodes=("n2",))
    assert set(states(core).values()) == {"healthy"}, states(core)
    view = {v["node_id"]: v for v in core.health.health_view()}
    assert [view[n]["heartbeat_timeout_s"] for n in ("n0", "n1", "n2")] == [6.0, 3.0, 6.0]
    run(core, clock, 5.5, nodes=("n0",))  # n1 silent 5.5 s (timeout 3 s), n2 silent 5.5 s (timeout 6 s)
    s = states(core)
    assert s["n1"] == "unhealthy" and s["n2"] == "healthy", s
    run(core, clock, 1.5, nodes=("n0",))  # (judged once a second)
    assert states(core)["n2"] == "unhealthy"
    reason = {v["node_id"]: v for v in core.health.health_view()}["n2"]["reasons"][0]
    assert "timeout 6 s, its heartbeats 1.5 s late lately" in reason, reason
