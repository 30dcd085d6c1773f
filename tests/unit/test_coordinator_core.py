"""The Coordinator's control loop driven by a fake RayOps (no cluster): lifecycle, recovery,
restart, placement timeout, cancel, max runtime. The real RayOps is covered by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from raycluster import constants as C
from raycluster.control.core import CoordinatorCore
from raycluster.errors import EntrypointImportError, IllegalTransition, InfeasibleJob, JobNotFound
from raycluster.policy.recovery import RankStatus
from raycluster.store.lifecycle import Cause
from tests.fakes import Clock, FakeOps


@pytest.fixture
def env(tmp_path):
    ops, clock = FakeOps(), Clock()
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    return core, ops, clock, tmp_path


def spec(name="j", workers=1, **kw):
    return {"name": name, "entrypoint": "jobs.toy:noop", "num_workers": workers,
            "resources": {"gpus": 1, "cpus": 1}, **kw}


def tick(core, clock, dt=0.1):
    clock.t += dt
    core.reconcile_once()


def test_lifecycle_to_success(env):
    core, ops, clock, _ = env
    jid = core.submit(spec(workers=2))["id"]
    tick(core, clock)  # admitted -> PLACING, PG created (ready at once)
    assert core.get(jid)["state"] == "PLACING"
    tick(core, clock)  # PG ready -> ranks launched -> RUNNING
    assert core.get(jid)["state"] == "RUNNING"
    refs = core.attempts[jid].refs
    assert len(refs) == 2
    # the loop is woken by every rank finishing
    assert set(refs) <= set(ops.watched)
    ops.results[refs[0]] = {"loss": 0.5}
    ops.finish(refs)
    tick(core, clock)
    job = core.get(jid)
    assert job["state"] == "SUCCEEDED" and job["result"] == {"loss": 0.5}
    assert ops.pgs[f"rc-{jid}-a1"].removed
    assert [t["to"] for t in job["transitions"]] == ["PENDING", "PLACING", "RUNNING", "SUCCEEDED"]
    assert [t["cause"] for t in job["transitions"]] == ["submitted", "admitted", "placed", "finished"]
    assert job["cause"] == "finished"
    # every decision was kept, in order, for inspection and replay
    assert [st.action.value for _ts, st in core.recent_steps if st.job_id == jid] == ["start", "mark_running",
                                                                                     "succeed"]


def test_the_loop_looks_again_soon_while_a_new_placement_group_may_be_placed(env):
    """Nothing wakes the loop when Ray places a group: for its first seconds it is looked at every
    PLACING_POLL_S, not at the next RECONCILE_INTERVAL_S tick (a gang started up to 1 s late)."""
    core, ops, clock, _ = env
    assert core.next_wait_s() == C.RECONCILE_INTERVAL_S  # idle: the normal tick
    ops.auto_ready = False
    jid = core.submit(spec())["id"]
    tick(core, clock)
    assert core.get(jid)["state"] == "PLACING" and core.next_wait_s() == C.PLACING_POLL_S
    clock.t += C.PLACING_FAST_WINDOW_S  # still unplaced after the window: a full cluster, the normal tick
    assert core.next_wait_s() == C.RECONCILE_INTERVAL_S
    ops.pgs[f"rc-{jid}-a1"].ready = True
    tick(core, clock)
    assert core.get(jid)["state"] == "RUNNING" and core.next_wait_s() == C.RECONCILE_INTERVAL_S
    # a job waits for room; the running one ends: its freed room is looked for soon
    ops.auto_ready = True
    nxt = core.submit(spec("next", workers=3))["id"]  # the whole cluster's GPUs
    tick(core, clock)
    assert core.get(nxt)["state"] == "PENDING" and core.next_wait_s() == C.RECONCILE_INTERVAL_S
    ops.finish(core.attempts[jid].refs)
    tick(core, clock)
    assert core.get(jid)["state"] == "SUCCEEDED" and core.next_wait_s() == C.PLACING_POLL_S


def test_system_failure_restarts_then_fails_when_budget_used(env):
    core, ops, clock, _ = env
    jid = core.submit(spec(workers=2, max_restarts=1))["id"]
    tick(core, clock), tick(core, clock)
    refs = core.attempts[jid].refs
    ops.finish(refs[1:], RankStatus.SYSTEM_ERROR, "NodeDiedError: node gone", Cause.NODE_LOST)
    ops.finish(refs[:1], RankStatus.USER_ERROR, "RuntimeError: Connection closed by peer")
    tick(core, clock)
    assert core.get(jid)["cause"] == "node_lost"
    job = core.get(jid)
    assert job["state"] == "RECOVERING" and job["system_restarts"] == 1
    assert ops.pgs[f"rc-{jid}-a1"].removed
    tick(core, clock)  # RECOVERING -> PLACING attempt 2
    assert core.get(jid)["state"] == "PLACING" and core.get(jid)["attempt"] == 2
    tick(core, clock)
    ops.finish(core.attempts[jid].refs, RankStatus.SYSTEM_ERROR, "WorkerCrashedError")
    tick(core, clock)
    job = core.get(jid)
    assert job["state"] == "FAILED" and "max_restarts=1" in job["reason"]


def test_peer_socket_error_waits_for_settle_before_blaming_user(env):
    core, ops, clock, _ = env
    jid = core.submit(spec(workers=2))["id"]
    tick(core, clock), tick(core, clock)
    refs = core.attempts[jid].refs
    ops.finish(refs[:1], RankStatus.USER_ERROR, "RuntimeError: Connection reset by peer")
    tick(core, clock)
    assert core.get(jid)["state"] == "RUNNING"  # rank 1 has not reported yet
    tick(core, clock, dt=C.FAILURE_SETTLE_S + 1)
    job = core.get(jid)
    assert job["state"] == "FAILED" and "Connection reset" in job["error"]
    assert refs[1] in ops.cancelled


def test_user_error_retry_budget(env):
    core, ops, clock, _ = env
    jid = core.submit(spec(max_user_retries=1))["id"]
    tick(core, clock), tick(core, clock)
    ops.finish(core.attempts[jid].refs, RankStatus.USER_ERROR, "ValueError: x")
    tick(core, clock)
    assert core.get(jid)["state"] == "RECOVERING" and core.get(jid)["user_retries"] == 1
    tick(core, clock), tick(core, clock)
    ops.finish(core.attempts[jid].refs, RankStatus.USER_ERROR, "ValueError: x")
    tick(core, clock)
    assert core.get(jid)["state"] == "FAILED"


def test_restarted_coordinator_recovers_without_spending_budget(env):
    core, ops, clock, tmp_path = env
    run = core.submit(spec("run"))["id"]
    tick(core, clock), tick(core, clock)
    ops.auto_ready = False
    placing = core.submit(spec("placing"))["id"]
    tick(core, clock)
    assert core.get(placing)["state"] == "PLACING"
    # the actor dies: a new core over the same database, with no in-memory attempts
    core2 = CoordinatorCore(tmp_path, ops, clock=clock)
    ops.auto_ready = True
    ops.pgs[f"rc-{placing}-a1"].ready = True
    tick(core2, clock)
    assert core2.get(run)["state"] == "RECOVERING" and core2.get(run)["system_restarts"] == 0
    assert core2.get(run)["cause"] == "coordinator_restart"
    assert core2.get(placing)["state"] == "RUNNING"  # found its placement group again
    tick(core2, clock), tick(core2, clock)
    assert core2.get(run)["state"] == "RUNNING" and core2.get(run)["attempt"] == 2
    assert ops.pgs[f"rc-{run}-a1"].removed


def test_placement_timeout_requeues(env):
    core, ops, clock, _ = env
    ops.auto_ready = False
    jid = core.submit(spec())["id"]
    tick(core, clock)
    assert core.get(jid)["state"] == "PLACING"
    tick(core, clock, dt=C.PLACEMENT_TIMEOUT_S + 1)
    job = core.get(jid)
    assert job["state"] == "PENDING" and "placement not ready" in job["reason"]
    assert job["cause"] == "placement_timeout" and job["placement_timeouts"] == 1
    assert ops.pgs[f"rc-{jid}-a1"].removed


def test_placement_timeouts_are_bounded_then_the_job_fails_with_no_resources(env, monkeypatch):
    core, ops, clock, _ = env
    monkeypatch.setattr(C, "MAX_PLACEMENT_TIMEOUTS", 3)
    ops.auto_ready = False
    jid = core.submit(spec())["id"]
    for attempt in (1, 2, 3):
        tick(core, clock)
        assert core.get(jid)["state"] == "PLACING" and core.get(jid)["attempt"] == attempt
        tick(core, clock, dt=C.PLACEMENT_TIMEOUT_S + 1)
    job = core.get(jid)
    assert job["state"] == "FAILED" and job["cause"] == "no_resources" and job["placement_timeouts"] == 3
    assert "could not be placed" in job["reason"] and "no resources" in job["error"]
    assert all(pg.removed for pg in ops.pgs.values())
    tick(core, clock, dt=C.PLACEMENT_TIMEOUT_S + 1)
    assert core.get(jid)["state"] == "FAILED"  # terminal: no more loops


def test_waiting_reason_is_stored_and_shown(env, monkeypatch):
    """What admission decides about jobs it does not start is kept: 'waiting for capacity', and
    'capacity reserved for <job>' behind a job holding a reservation."""
    core, ops, clock, _ = env
    monkeypatch.setattr(C, "STARVATION_THRESHOLD_S", 5.0)
    blocker = core.submit(spec("blocker", workers=2))["id"]  # 2 of the 3 GPUs
    tick(core, clock), tick(core, clock)
    assert core.get(blocker)["state"] == "RUNNING"
    big = core.submit(spec("big", workers=3, priority=90))["id"]  # needs all 3: waits
    tick(core, clock)
    assert core.get(big)["waiting"] == "waiting for capacity"
    clock.t += 10  # past the starvation threshold: big holds a reservation
    small = core.submit(spec("small", workers=1, priority=10))["id"]  # would fit, but is held back
    tick(core, clock)
    assert core.get(big)["waiting"] == "waiting for capacity (holds reservation)"
    assert core.get(small)["state"] == "PENDING"
    assert core.get(small)["waiting"] == f"capacity reserved for {big}"
    assert core.list(["PENDING"])[0]["waiting"]  # list answers carry it too
    ops.finish(core.attempts[blocker].refs)
    tick(core, clock), tick(core, clock)
    assert core.get(big)["state"] in ("PLACING", "RUNNING") and core.get(big)["waiting"] is None


def test_cancel_running_tears_down_and_twice_is_illegal(env):
    core, ops, clock, _ = env
    jid = core.submit(spec(workers=2))["id"]
    tick(core, clock), tick(core, clock)
    refs = list(core.attempts[jid].refs)
    assert core.cancel(jid)["state"] == "CANCELLED"
    assert set(refs) <= set(ops.cancelled) and ops.pgs[f"rc-{jid}-a1"].removed
    assert jid not in core.attempts
    with pytest.raises(IllegalTransition):
        core.cancel(jid)
    tick(core, clock)
    assert core.get(jid)["state"] == "CANCELLED"


def test_max_runtime(env):
    core, ops, clock, _ = env
    jid = core.submit(spec(max_runtime_s=5))["id"]
    tick(core, clock), tick(core, clock)
    tick(core, clock, dt=6)
    job = core.get(jid)
    assert job["state"] == "FAILED" and "max_runtime_s" in job["error"]


def test_submit_validation_leaves_nothing_behind(env):
    core, ops, clock, _ = env
    ops.bad_entrypoints.add("jobs.gone:train")
    with pytest.raises(EntrypointImportError):
        core.submit({**spec(), "entrypoint": "jobs.gone:train"})
    with pytest.raises(InfeasibleJob):
        core.submit(spec(workers=4))
    assert core.list() == []


def test_a_gang_a_node_added_a_moment_ago_makes_feasible_is_taken_and_still_refused_without_it(env):
    """The feasibility check reads the node table at most NODE_TOTALS_TTL_S old, but refuses only on
    a table read now: a node that joined since the last read counts (a refusal is for good)."""
    core, ops, clock, _ = env
    wide = len(ops.total) + 1
    with pytest.raises(InfeasibleJob, match="more than the whole cluster has"):
        core.submit(spec("wide", workers=wide))  # (the table read now, cached)
    ops.total[f"n{wide}"] = {"CPU": 2.0, "GPU": 1.0}  # a node joins; no time passes
    jid = core.submit(spec("wide", workers=wide))["id"]
    assert core.get(jid)["state"] == "PENDING"
    with pytest.raises(InfeasibleJob, match="more than the whole cluster has"):  # still refused beyond it
        core.submit(spec("wider", workers=wide + 1))
    assert [j["id"] for j in core.list()] == [jid]


def test_idempotent_submit(env):
    core, *_ = env
    a = core.submit(spec(), idempotency_key="k")
    b = core.submit(spec(), idempotency_key="k")
    assert a["id"] == b["id"] and len(core.list()) == 1


def test_priority_order_with_limited_capacity(env):
    core, ops, clock, _ = env
    ops.total = {"n0": {"CPU": 2.0, "GPU": 1.0}}
    low = core.submit(spec("low", priority=10))["id"]
    high = core.submit(spec("high", priority=90))["id"]
    tick(core, clock)
    assert core.get(high)["state"] == "PLACING" and core.get(low)["state"] == "PENDING"


def test_a_failing_step_does_not_stop_the_loop_nor_leave_half_a_gang(env, monkeypatch):
    core, ops, clock, _ = env
    a = core.submit(spec("a", workers=2))["id"]
    b = core.submit(spec("b"))["id"]
    real_launch = ops.launch_rank
    launched_for_a = []

    def flaky(pg, i, res, launch, rt, name):
        if launch["job_id"] == a and launch["rank"] == 1:
            raise RuntimeError("raylet hiccup")
        ref = real_launch(pg, i, res, launch, rt, name)
        if launch["job_id"] == a:
            launched_for_a.append(ref)
        return ref

    monkeypatch.setattr(ops, "launch_rank", flaky)
    tick(core, clock)
    tick(core, clock)
    assert core.get(b)["state"] == "RUNNING"  # b is unaffected by a's failing step
    assert core.get(a)["state"] == "PLACING" and core.attempts[a].refs is None
    assert launched_for_a and set(launched_for_a) <= set(ops.cancelled)  # rank 0 of a was not left running
    monkeypatch.setattr(ops, "launch_rank", real_launch)
    tick(core, clock)
    assert core.get(a)["state"] == "RUNNING" and len(core.attempts[a].refs) == 2


def test_metrics_are_buffered_then_persisted(env):
    core, ops, clock, _ = env
    jid = core.submit(spec())["id"]
    core.report(jid, 1, 10, {"loss": 1.5})
    core.report(jid, 1, 20, {"loss": 1.0})
    tick(core, clock)
    assert core.get(jid)["last_metrics"] == {"loss": 1.0, "step": 20}
    assert [m["step"] for m in core.metrics(jid)] == [10, 20]


def test_rank_logs_tail_per_attempt_and_rank(env):
    core, ops, clock, tmp = env
    jid = core.submit(spec(workers=2))["id"]
    tick(core, clock)
    tick(core, clock)
    assert core.logs(jid) == []
    from raycluster.rank.logs import rank_log_path

    for attempt, rank, n in ((2, 0, 3), (1, 1, 5), (1, 0, 300), (10, 0, 1)):
        p = Path(rank_log_path(tmp / "logs", jid, attempt, rank))
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(f"a{attempt} r{rank} line {i}\n" for i in range(n)))
    (p.parent / "junk.txt").write_text("ignored")
    out = core.logs(jid)
    assert [(e["attempt"], e["rank"]) for e in out] == [(1, 0), (1, 1), (2, 0), (10, 0)]
    assert len(out[0]["lines"]) == 200 and out[0]["lines"][-1] == "a1 r0 line 299"
    assert out[1]["lines"] == [f"a1 r1 line {i}" for i in range(5)]
    assert [e["lines"] for e in core.logs(jid, tail_lines=2)][2] == ["a2 r0 line 1", "a2 r0 line 2"]
    assert all(e["lines"] == [] for e in core.logs(jid, tail_lines=0))
    with pytest.raises(JobNotFound):
        core.logs("job-nope")


def test_launch_carries_log_dir_and_uploaded_packages_are_pinned(env, monkeypatch):
    core, ops, clock, tmp = env
    launches = []
    real = ops.launch_rank
    monkeypatch.setattr(ops, "launch_rank", lambda *a: launches.append(a[3]) or real(*a))
    uri = "gcs://_ray_pkg_0123456789abcdef.zip"
    jid = core.submit(spec(runtime_env={"working_dir": uri, "py_modules": [uri.replace("0123", "3210"), "s3://x/m.zip"]}))["id"]
    assert ops.pinned and ops.pinned[0][0] == (uri, uri.replace("0123", "3210"))  # pinned at submit
    tick(core, clock)
    tick(core, clock)
    assert launches[0]["log_dir"] == str(tmp / "logs")
    ops.pinned.clear()
    clock.t += C.PACKAGE_PIN_S  # renewed while the job is not finished
    core.reconcile_once()
    assert ops.pinned and uri in ops.pinned[0][0]
    core.cancel(jid)
    ops.pinned.clear()
    clock.t += C.PACKAGE_PIN_S
    core.reconcile_once()
    assert ops.pinned == []  # finished jobs' packages are left to Ray


def test_a_long_queue_costs_nothing_while_nothing_changes(env, monkeypatch):
    """With jobs queued and nothing changing, a pass reads no job rows (only the versions changed
    since the last pass) and does not decide admission again; a submit, a freed GPU or a cancel
    makes the next pass decide (and read just that row)."""
    core, ops, clock, _ = env
    blocker = core.submit(spec("blocker", workers=3))["id"]  # all 3 GPUs
    tick(core, clock), tick(core, clock)
    queued = [core.submit(spec(f"q{i}", priority=i % 3 * 40))["id"] for i in range(50)]
    tick(core, clock)
    assert all(core.get(j)["waiting"] == "waiting for capacity" for j in queued)
    read = []
    real_changed = core.store.changed_since
    monkeypatch.setattr(core.store, "changed_since", lambda rev: read.append(real_changed(rev)) or read[-1])
    monkeypatch.setattr(core.store, "list", lambda *a, **k: pytest.fail("a pass read the whole table"))
    passes = core.queue.passes
    for _ in range(5):
        tick(core, clock)
    assert core.queue.passes == passes and core.queue.skipped >= 5
    assert all(recs == [] for recs, _rev in read)
    written = []
    real_set_waiting = core.store.set_waiting
    monkeypatch.setattr(core.store, "set_waiting", lambda reasons: written.append(reasons) or real_set_waiting(reasons))
    extra = core.submit(spec("extra"))["id"]
    tick(core, clock)
    assert [r.id for r in read[-1][0]] == [extra] and core.queue.passes == passes + 1
    assert core.get(extra)["waiting"] == "waiting for capacity"
    assert written == [{extra: "waiting for capacity"}]  # the others' reasons are unchanged: not written
    core.cancel(queued[0])
    ops.finish(core.attempts[blocker].refs)  # frees the 3 GPUs: the head of the queue starts
    tick(core, clock), tick(core, clock)
    started = [core.get(j) for j in queued[1:] if core.get(j)["state"] != "PENDING"]
    assert len(started) == 3 and all(j["priority"] == 80 for j in started)
    assert core.get(queued[0])["state"] == "CANCELLED" and queued[0] not in core.queue


def test_submit_many_is_all_or_none_and_idempotent_per_item(env, monkeypatch):
    """A batch is validated whole before anything is stored: one bad item fails it naming
    jobs[i].<field>, and nothing is created. Items whose key made a job before answer that job; a
    key reused with another spec is refused (nothing created); a batch is one transaction."""
    from raycluster.errors import IdempotencyKeyReused, InvalidJobSpec

    core, ops, clock, _ = env
    items = [{"spec": spec(f"b{i}"), "idempotency_key": f"k{i}"} for i in range(5)]
    bad = [*items[:2], {"spec": spec("bad", workers=0), "idempotency_key": "kx"}, *items[2:]]
    with pytest.raises(InvalidJobSpec) as err:
        core.submit_many(bad)
    assert err.value.field == "jobs[2].spec.num_workers" and "jobs[2]" in err.value.message
    huge = [*items[:1], {"spec": spec("huge", workers=9)}]  # more GPUs than the cluster has
    with pytest.raises(InfeasibleJob) as err:
        core.submit_many(huge)
    assert err.value.field == "jobs[1].spec.num_workers"
    assert core.list() == []  # nothing created by either
    for wrong, field in (([], "jobs"), ("x", "jobs"), ([{"spec": spec()}, 3], "jobs[1]"),
                         ([{"spec": spec(), "extra": 1}], "jobs[0]"),
                         ([{"spec": spec(), "idempotency_key": "a"}, {"spec": spec(), "idempotency_key": "a"}],
                          "jobs[1].idempotency_key"),
                         ([{"spec": spec(), "idempotency_key": ""}], "jobs[0].idempotency_key")):
        with pytest.raises(InvalidJobSpec) as err:
            core.submit_many(wrong)
        assert err.value.field == field, wrong
    monkeypatch.setattr(C, "SUBMIT_BATCH_MAX", 3)
    with pytest.raises(InvalidJobSpec, match="at most 3"):
        core.submit_many(items)
    monkeypatch.setattr(C, "SUBMIT_BATCH_MAX", 1000)

    writes = []
    real = core.store.insert_many
    monkeypatch.setattr(core.store, "insert_many", lambda rows, now=None: writes.append(len(rows)) or real(rows, now))
    first = core.submit_many(items)
    assert [j["name"] for j in first] == [f"b{i}" for i in range(5)] and writes == [5]
    # a retry of the batch with two new items: the five answer the same jobs, two are created
    again = core.submit_many([*items, {"spec": spec("b5"), "idempotency_key": "k5"}, {"spec": spec("b6")}])
    assert [j["id"] for j in again[:5]] == [j["id"] for j in first] and writes == [5, 2]
    assert len(core.list()) == 7 and len({j["id"] for j in again}) == 7
    assert core.submit(spec("b0"), "k0")["id"] == first[0]["id"]  # a single submit agrees
    with pytest.raises(IdempotencyKeyReused) as err:
        core.submit_many([{"spec": spec("b7"), "idempotency_key": "k7"},
                          {"spec": spec("other"), "idempotency_key": "k1"}])
    assert err.value.field == "jobs[1].idempotency_key" and first[1]["id"] in err.value.message
    with pytest.raises(IdempotencyKeyReused):
        core.submit(spec("other"), "k1")
    assert len(core.list()) == 7  # neither created anything
    tick(core, clock)
    assert sum(j["state"] == "PLACING" for j in core.list()) == 3  # they queue like any job


def test_a_queued_job_whose_stored_spec_no_longer_parses_fails_alone(env):
    """A row written by a version whose spec this one rejects fails that job with a clear error
    (cause system_error); the rest of the queue is admitted as usual."""
    core, ops, clock, _ = env
    odd = core.store.insert(name="odd", spec={"name": "odd", "entrypoint": "jobs.toy:noop", "gpu": 1},
                            priority=99, tenant=None, now=clock.t)
    ok = core.submit(spec("ok"))["id"]
    tick(core, clock)
    job = core.get(odd.id)
    assert job["state"] == "FAILED" and job["cause"] == "system_error" and "gpu" in job["error"]
    assert core.get(ok)["state"] == "PLACING"


def test_an_elastic_cluster_accepts_gangs_it_can_rent_for_and_tells_the_autoscaler(tmp_path):
    """With an autoscaling config recorded (an elastic local cluster), a gang larger than the nodes up
    now is accepted if the nodes the autoscaler may rent can hold it, and the bundles of every running
    and queued gang are told to the autoscaler as demand — cleared once nothing is left."""
    from raycluster.errors import InfeasibleJob
    from tests.fakes import record_spot_cluster

    record_spot_cluster(tmp_path, max_workers=3, spot_max_workers=5)
    ops, clock = FakeOps(nodes=1), Clock()
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    assert len(core.elastic_nodes) == 3  # the cluster's max_workers caps the type's 5
    big = core.submit(spec("big", workers=4, placement_strategy="STRICT_SPREAD"))["id"]  # 1 up + 3 to rent
    with pytest.raises(InfeasibleJob, match="the autoscaler may rent"):
        core.submit(spec("huge", workers=5, placement_strategy="STRICT_SPREAD"))
    tick(core, clock)
    assert core.get(big)["state"] == "PENDING"
    assert ops.requested[-1] == [{"CPU": 1.0, "GPU": 1.0}] * 4
    n = len(ops.requested)
    tick(core, clock)
    assert len(ops.requested) == n  # unchanged demand is not told again
    core.cancel(big)
    tick(core, clock)
    assert ops.requested[-1] == []  # nothing queued or running: idle rented nodes may go


def test_rentals_and_preempt_need_an_elastic_cluster_and_a_known_node(tmp_path):
    import json

    from raycluster.errors import NotElastic
    from raycluster.provision.local.record import cluster_dir
    from raycluster.provision.market.base import UnknownRental

    core = CoordinatorCore(tmp_path, FakeOps(), clock=Clock())
    with pytest.raises(NotElastic, match="rents no nodes"):
        core.rentals()
    with pytest.raises(NotElastic):
        core.preempt("rent-x")
    cluster_dir(tmp_path).mkdir(parents=True)
    (cluster_dir(tmp_path) / "autoscaling.json").write_text(json.dumps({
        "provider": {"state_dir": str(tmp_path / "provider"), "head_address": "127.0.0.1:1", "markets": {"local": {}}},
        "available_node_types": {}, "max_workers": 0}))
    assert core.rentals(include_released=True) == []
    with pytest.raises(UnknownRental, match="rents out no node 'rent-nope'") as err:
        core.preempt("rent-nope", 5)
    assert err.value.http_status == 404 and err.value.field == "node"


def test_a_gang_that_can_never_run_within_the_budget_is_rejected_at_submit(tmp_path):
    """An elastic cluster with max_hourly_budget_usd: a gang whose cheapest set of rented nodes costs
    more per hour than the cap is refused at submit, naming the budget; one that fits is accepted;
    one that fits on the fixed nodes (no rent needed) is accepted whatever the cap."""
    import json

    from raycluster.errors import InfeasibleJob
    from raycluster.provision.local.record import cluster_dir

    cluster_dir(tmp_path).mkdir(parents=True)
    (cluster_dir(tmp_path) / "autoscaling.json").write_text(json.dumps({
        "max_workers": 8, "head_node_type": "head",
        "provider": {"max_hourly_budget_usd": 0.5, "raycluster_state_dir": str(tmp_path),
                     "markets": {"local": {"gpu_types": {
            "T4": {"gpus": 1, "cpus": 2, "capacity": 8, "spot_usd_per_hour": 0.16, "on_demand_usd_per_hour": 0.53}}}}},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "max_workers": 0},
            "gpu_spot": {"resources": {"CPU": 2, "GPU": 1, "raycluster_spot": 1000}, "max_workers": 8,
                         "node_config": {"market": "local", "kind": "spot", "gpu_type": "T4"}},
            "gpu_ondemand": {"resources": {"CPU": 2, "GPU": 1, "raycluster_on_demand": 1000}, "max_workers": 8,
                             "node_config": {"market": "local", "kind": "on_demand", "gpu_type": "T4"}}}}))
    ops, clock = FakeOps(nodes=1), Clock()  # one fixed node with a GPU
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    assert core.gate.live_cap() == 0.5 and len(core.budget_types) == 2
    core.submit(spec("fits-fixed", workers=1))
    core.submit(spec("three-spot", workers=3, placement_strategy="STRICT_SPREAD"))  # 3 x 0.16 = 0.48
    with pytest.raises(InfeasibleJob) as e:
        core.submit(spec("four-spot", workers=4, placement_strategy="STRICT_SPREAD"))  # 0.64 > 0.50
    assert "budget: its 4 worker(s) need at least 0.64 USD/h of rented nodes, more than max_hourly_budget_usd 0.50" \
        in str(e.value)
    assert sorted(j["name"] for j in core.list()) == ["fits-fixed", "three-spot"]  # nothing made for the refused one
    # issue 20: a gang is priced at the kind its spot choice allows — `never` on-demand (0.53 > 0.50)
    ops.total = {}  # (no fixed node any more: every gang needs rented ones)
    core.nodes.forget()
    with pytest.raises(InfeasibleJob, match="0.53 USD/h of rented on-demand"):
        core.submit(spec("od", workers=1, spot="never"))
    core.submit(spec("only-spot", workers=3, spot="only", placement_strategy="STRICT_SPREAD"))  # 0.48 spot
    # ... against the cap in force: `budget --set` / PUT /budget change it at run time
    from raycluster.provision.spend import set_budget

    set_budget(tmp_path, 0.4)
    clock.t += 2  # (read at most once a second)
    with pytest.raises(InfeasibleJob, match="more than max_hourly_budget_usd 0.40"):
        core.submit(spec("three-again", workers=3, placement_strategy="STRICT_SPREAD"))
    set_budget(tmp_path, 1.0)
    clock.t += 2
    core.submit(spec("four-spot", workers=4, placement_strategy="STRICT_SPREAD"))
    core.submit(spec("od", workers=1, spot="never"))
    assert sorted(j["name"] for j in core.list()) == ["fits-fixed", "four-spot", "od", "only-spot", "three-spot"]


def _elastic_core(tmp_path, nodes=("n0", "n1")):
    """A Coordinator over FakeOps whose nodes are rented spot nodes (the provider's books in SQLite)."""
    import json

    from raycluster.provision.local.record import cluster_dir
    from raycluster.labels import RENTAL_LABEL
    from raycluster.store.rentals import RentalRecord, RentalState, RentalStore

    cluster_dir(tmp_path).mkdir(parents=True)
    (cluster_dir(tmp_path) / "autoscaling.json").write_text(json.dumps({
        "max_workers": 4, "head_node_type": "head",
        "provider": {"state_dir": str(tmp_path / "prov"), "markets": {"local": {}}},
        "available_node_types": {
            "head": {"resources": {"CPU": 0}, "max_workers": 0},
            "gpu_spot": {"resources": {"CPU": 2, "GPU": 1, "raycluster_spot": 1000}, "max_workers": 4,
                         "node_config": {"market": "local", "kind": "spot", "gpu_type": "T4"}}}}))
    ops, clock = FakeOps(nodes=0), Clock()
    store = RentalStore(tmp_path / "prov" / "rentals.db")
    for n in nodes:
        ops.total[n] = {"CPU": 2.0, "GPU": 1.0, "raycluster_spot": 1000.0}
        store.insert(RentalRecord(id=f"rent-{n}", request_id=f"r:{n}", market="local", node_type="gpu_spot",
                                  kind="spot", gpu_type="T4", usd_per_hour=0.16, state=RentalState.RUNNING,
                                  created_at=clock.t, running_at=clock.t))
    real_nodes = ops.nodes
    ops.nodes = lambda: [{**n, "labels": {RENTAL_LABEL: f"rent-{n['id']}"}} for n in real_nodes()]
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    assert core.ledger.elastic
    return core, ops, clock, store


def _until(core, clock, pred, what, dt=0.5, limit=200):
    for _ in range(limit):
        if pred():
            return
        tick(core, clock, dt)
    raise AssertionError(what)


def test_a_spot_job_preempted_three_times_with_one_restart_succeeds(tmp_path):
    """Issue 20: a spot preemption was recorded as a system failure and spent a restart, so a spot job
    preempted more often than max_restarts failed — on spot, the normal case."""
    core, ops, clock, store = _elastic_core(tmp_path)
    jid = core.submit(spec("spotty", max_restarts=1))["id"]
    for i in range(3):
        _until(core, clock, lambda: core.get(jid)["state"] == "RUNNING", "running")
        rental = f"rent-{core.attempts[jid].nodes[0]}"
        store.update(rental, preempt_deadline=clock.t + 1)  # the market's notice, then the node goes
        ops.finish(core.attempts[jid].refs, RankStatus.SYSTEM_ERROR)  # NodeDiedError
        _until(core, clock, lambda: core.get(jid)["state"] != "RUNNING", "recovering")
        store.update(rental, preempt_deadline=None)  # (the next attempt's node is not the preempted one)
    _until(core, clock, lambda: core.get(jid)["state"] == "RUNNING", "running")
    ops.finish(core.attempts[jid].refs)
    _until(core, clock, lambda: core.get(jid)["state"] == "SUCCEEDED", "succeeded")
    job = core.get(jid)
    assert job["preemptions"] == 3 and job["system_restarts"] == 0
    assert [t["cause"] for t in job["transitions"]].count("spot_preempted") == 3


def test_a_shed_moves_its_gang_with_cause_budget_and_spends_no_restart(tmp_path):
    """Issue 20: a node given back for the budget ended its job's attempt as node_lost (a restart);
    with max_restarts: 0 a shed failed the job. Now: checkpointed, moved (cause budget), then released."""
    core, ops, clock, store = _elastic_core(tmp_path)
    jid = core.submit(spec("shed-me", max_restarts=0))["id"]
    _until(core, clock, lambda: core.get(jid)["state"] == "RUNNING", "running")
    rental = f"rent-{core.attempts[jid].nodes[0]}"
    assert core.move_off(rental, "budget", "over budget 0.32/0.16 USD/h") == [jid]
    assert core.get(jid)["state"] == "RECOVERING"
    # while it waits for the budget in PLACING, its reason shows, as it would in PENDING
    ops.auto_ready = False
    _until(core, clock, lambda: core.get(jid)["state"] == "PLACING", "placing")
    core.set_budget_reasons({jid: "budget 0.16/0.16 USD/h, needs 0.16 more"})
    assert core.get(jid)["waiting"] == "budget 0.16/0.16 USD/h, needs 0.16 more"
    ops.pgs[f"rc-{jid}-a2"].ready = True
    _until(core, clock, lambda: core.get(jid)["state"] == "RUNNING", "running again")
    assert core.get(jid)["waiting"] is None
    ops.finish(core.attempts[jid].refs)
    _until(core, clock, lambda: core.get(jid)["state"] == "SUCCEEDED", "succeeded")
    job = core.get(jid)
    assert job["system_restarts"] == 0 and [t["cause"] for t in job["transitions"]].count("budget") == 1
    assert core.move_off(rental, "budget", "again") == []  # nothing of it runs there any more


def test_one_submit_gate_for_jobs_batches_and_schedules_in_its_order(tmp_path):
    """Entrypoint before feasibility; a success cached; a schedule passes the same gate (its own words)."""
    from raycluster.errors import InfeasibleJob as Infeasible

    ops = FakeOps()
    core = CoordinatorCore(tmp_path, ops, clock=Clock())
    asked: list[str] = []
    check = ops.check_entrypoint
    ops.check_entrypoint = lambda ep, env, t: asked.append(ep) or check(ep, env, t)
    ops.bad_entrypoints.add("jobs.nope:train")
    huge = {"num_workers": 64, "resources": {"gpus": 1}}
    with pytest.raises(EntrypointImportError):  # the entrypoint is checked first
        core.submit({"name": "x", "entrypoint": "jobs.nope:train", **huge})
    with pytest.raises(Infeasible, match="job can never be placed"):
        core.submit({"name": "x", "entrypoint": "jobs.toy:noop", **huge})
    with pytest.raises(Infeasible, match="its runs could never be placed"):
        core.schedules.create({"name": "x", "entrypoint": "jobs.toy:noop", "schedule": "0 2 * * *", **huge})
    with pytest.raises(Infeasible) as exc:
        core.submit_many([{"spec": {"name": "ok", "entrypoint": "jobs.toy:noop"}},
                          {"spec": {"name": "x", "entrypoint": "jobs.toy:noop", **huge}}])
    assert exc.value.field == "jobs[1].spec.num_workers"
    assert asked == ["jobs.nope:train", "jobs.toy:noop"]  # a success is cached: asked once
    assert core.list() == []  # nothing stored by any refusal


def test_a_job_done_before_the_loop_saw_it_placed_is_still_charged_from_its_start(tmp_path):
    """Seen in the budget burst test: a short job placed and finished between two passes was marked
    RUNNING and SUCCEEDED in one pass, its usage opened and closed at the same instant: cost 0."""
    core, ops, clock, _store = _elastic_core(tmp_path)
    ops.auto_ready = False
    jid = core.submit(spec("short"))["id"]
    tick(core, clock, 0.1)
    core.rank_started(jid, core.get(jid)["attempt"])  # rank 0 starts as soon as the group is placed...
    for pg in ops.pgs.values():
        pg.ready = True
    clock.t += 30.0  # ... and the loop looks 30 s later: the job is already done
    ops.finish(core.attempts[jid].refs)
    tick(core, clock, 0.1)
    job = core.get(jid)
    assert job["state"] == "SUCCEEDED"
    assert job["cost_usd"] == pytest.approx(0.16 * 30.1 / 3600, rel=0.01)  # one spot node, 30 s
    assert core.gangs._rank_started == {}


def test_a_gang_not_yet_attributed_to_its_rental_is_still_found_by_its_ray_node(tmp_path):
    """A gang placed just as its rented node joined may not be in the usage ledger under that rental
    yet: the BudgetAutoscaler also names the node's Ray id, and the gang is asked to checkpoint and
    moved all the same (seen once: a shed node's gang never asked to checkpoint)."""
    core, ops, clock, _store = _elastic_core(tmp_path)
    jid = core.submit(spec("new-node"))["id"]
    _until(core, clock, lambda: core.get(jid)["state"] == "RUNNING", "running")
    node = core.attempts[jid].nodes[0]
    assert core.checkpoint_now("rent-unknown", "over budget") == {}  # not by the ledger
    asked = core.checkpoint_now("rent-unknown", "over budget", "budget", node)
    assert list(asked) == [jid] and core.evacuations.checkpoint_wanted(jid, asked[jid][0])
    assert core.move_off("rent-unknown", "budget", "over budget", node) == [jid]
    job = core.get(jid)
    assert job["state"] == "RECOVERING" and job["cause"] == "budget" and job["system_restarts"] == 0


def test_a_running_jobs_ranks_name_their_ray_node_and_rental(tmp_path):
    """One node identity: status JOB / GET /jobs/{id} show each rank's Ray node id and, on a rented
    node, its rental (the id `raycluster nodes` lists)."""
    core, ops, clock, store = _elastic_core(tmp_path)
    jid = core.submit(spec("placed", workers=2))["id"]
    _until(core, clock, lambda: core.get(jid)["state"] == "RUNNING", "running")
    ranks = core.get(jid)["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["rental"] == f"rent-{r['node_id']}" and store.get(r["rental"]) is not None for r in ranks)


def test_a_job_placed_on_a_node_that_joined_after_the_node_list_was_read_is_billed(tmp_path):
    """The burst test saw a job with cost 0: its group was created for the room the node list showed
    (n0), Ray placed it on a node that joined just after (n1), and the Coordinator's cached list, read
    before the join, had no rental for it: the job went unbilled."""
    from raycluster.store.rentals import RentalRecord, RentalState

    core, ops, clock, store = _elastic_core(tmp_path, nodes=("n0",))
    ops.auto_ready = False
    jid = core.submit(spec("moved-by-ray", resources={"gpus": 1, "cpus": 1}))["id"]
    _until(core, clock, lambda: core.get(jid)["state"] == "PLACING", "placing")
    store.insert(RentalRecord(id="rent-n1", request_id="r:n1", market="local", node_type="gpu_spot", kind="spot",
                              gpu_type="T4", usd_per_hour=0.16, state=RentalState.RUNNING, created_at=clock.t,
                              running_at=clock.t))
    ops.total["n1"] = {"CPU": 2.0, "GPU": 1.0, "raycluster_spot": 1000.0}  # it joins ...
    pg = core.attempts[jid].pg
    pg.ready, pg.nodes = True, ["n1"]  # ... and Ray puts the group there
    tick(core, clock, 0.1)
    assert core.get(jid)["state"] == "RUNNING" and core.attempts[jid].nodes == ["n1"]
    clock.t += 60
    assert core.ledger.costs([jid])[jid] > 0


def test_a_gang_moved_back_to_spot_is_placed_again_on_spot_only_and_only_that_attempt(tmp_path):
    """A spot return moved the gang off on-demand; placed again as `auto`, it could land on the next
    free on-demand room (another on-demand node idle at a busy peak) and the move bought nothing. Its
    next attempt asks for spot (the kind marker), the BudgetAutoscaler is told so, the transition says
    why; the attempt after it is the spec's choice again."""
    core, ops, clock, _store = _elastic_core(tmp_path)
    jid = core.submit(spec("back-to-spot"))["id"]
    _until(core, clock, lambda: core.get(jid)["state"] == "RUNNING", "running")
    assert "raycluster_spot" not in ops.pgs[f"rc-{jid}-a1"].bundles[0]  # `auto`: any kind
    rental = f"rent-{core.attempts[jid].nodes[0]}"
    assert core.move_off(rental, "spot_return", "spot return: saves 0.37 USD") == [jid]
    assert core.get(jid)["cause"] == "spot_return"
    ops.auto_ready = False
    _until(core, clock, lambda: core.get(jid)["state"] == "PLACING", "placing")
    job = core.get(jid)
    assert job["attempt_spot"] == "only" and "on spot only (moved back to spot)" in job["transitions"][-1]["reason"]
    assert ops.pgs[f"rc-{jid}-a2"].bundles[0]["raycluster_spot"] > 0
    assert [g["spot"] for g in core.budget_queue()] == ["only"]
    ops.pgs[f"rc-{jid}-a2"].ready = True
    _until(core, clock, lambda: core.get(jid)["state"] == "RUNNING", "running on spot")
    assert core.move_off(f"rent-{core.attempts[jid].nodes[0]}", "budget", "over budget") == [jid]
    ops.auto_ready = True
    _until(core, clock, lambda: core.get(jid)["attempt"] == 3 and core.get(jid)["state"] == "RUNNING", "again")
    assert core.get(jid)["attempt_spot"] is None and "raycluster_spot" not in ops.pgs[f"rc-{jid}-a3"].bundles[0]
    assert core.get(jid)["system_restarts"] == 0
