"""Sharing one cluster: tenant quotas, per-job limits, fair share and preemption — the pure policies
(parametrized tables) and the Coordinator's loop driving them with a fake RayOps (no cluster)."""

from __future__ import annotations

import pytest

from raycluster import constants as C
from raycluster.control.core import CoordinatorCore
from raycluster.errors import InvalidJobSpec
from raycluster.policy.admission import QueuedJob, decide_admission, AdmissionContext, AdmissionQueue
from raycluster.policy.preemption import PreemptionContext, RunningGang, Waiter, decide_preemption
from raycluster.policy.tenants import (Demand, QuotaView, check_job_limits, decay_usage, fair_share_factors,
                                       parse_tenants, quota_reason, TenantQuota)
from raycluster.policy.recovery import RankStatus
from tests.fakes import Clock, FakeOps

GPU = {"CPU": 1.0, "GPU": 1.0}


# ---------------------------------------------------------------------------------------------- quotas
@pytest.mark.parametrize("quota,used,job,expect", [
    ({}, Demand(gpus=100, jobs=50), Demand(gpus=8), None),
    ({"max_gpus": 8}, Demand(gpus=7, jobs=3), Demand(gpus=1), None),
    ({"max_gpus": 8}, Demand(gpus=8, jobs=4), Demand(gpus=1), "tenant quota team-a 8/8 GPU"),
    ({"max_gpus": 8}, Demand(gpus=6, jobs=1), Demand(gpus=4), "tenant quota team-a 6/8 GPU"),
    ({"max_gpus": 8}, Demand(gpus=7.5, jobs=1), Demand(gpus=0.5), None),
    ({"max_cpus": 4}, Demand(cpus=3.5, jobs=1), Demand(cpus=1), "tenant quota team-a 3.5/4 CPU"),
    ({"max_memory_mb": 1024}, Demand(memory_mb=1000, jobs=1), Demand(memory_mb=100),
     "tenant quota team-a 1000/1024 MB memory"),
    ({"max_jobs": 2}, Demand(jobs=2), Demand(), "tenant quota team-a 2/2 jobs"),
    ({"max_jobs": 0}, Demand(jobs=0), Demand(), "tenant quota team-a 0/0 jobs"),
    ({"max_gpus": 8, "max_jobs": 2}, Demand(gpus=8, jobs=2), Demand(gpus=1), "tenant quota team-a 8/8 GPU"),
])
def test_quota_table(quota, used, job, expect):
    assert quota_reason("team-a", TenantQuota(**quota), used, job) == expect


@pytest.mark.parametrize("limits,args,expect", [
    ({}, dict(num_workers=64, gpus_per_worker=8), None),
    ({"max_workers": 4}, dict(num_workers=4), None),
    ({"max_workers": 4}, dict(num_workers=5), "num_workers"),
    ({"max_gpus": 4}, dict(num_workers=4, gpus_per_worker=1), None),
    ({"max_gpus": 4}, dict(num_workers=3, gpus_per_worker=2), "resources.gpus"),
    ({"max_cpus": 8}, dict(num_workers=3, cpus_per_worker=4), "resources.cpus"),
    ({"max_runtime_s": 3600}, dict(max_runtime_s=None), "max_runtime_s"),
    ({"max_runtime_s": 3600}, dict(max_runtime_s=7200), "max_runtime_s"),
    ({"max_runtime_s": 3600}, dict(max_runtime_s=60), None),
    ({"max_priority": 50}, dict(priority=80), "priority"),
    ({"min_priority": 10}, dict(priority=5), "priority"),
])
def test_per_job_limits_table(limits, args, expect):
    cfg = parse_tenants({"tenants": {"team-a": {"per_job": limits}}})
    kw = {**dict(num_workers=1, gpus_per_worker=0.0, cpus_per_worker=1.0, priority=50, max_runtime_s=None), **args}
    found = check_job_limits(cfg, "team-a", **kw)
    assert (found[0] if found else None) == expect
    if found:
        assert "team-a" in found[1]
    assert check_job_limits(cfg, "team-b", **kw) is None  # another tenant: the (empty) default


@pytest.mark.parametrize("data,fragment", [
    ({"tenants": {"a": {"max_gpus": -1}}}, "tenants.a.max_gpus"),
    ({"tenants": {"a": {"max_gpu": 1}}}, "tenants.a.max_gpu: unknown field"),
    ({"tenants": {"a": {"per_job": {"max_workers": 0}}}}, "tenants.a.per_job.max_workers"),
    ({"tenant": {}}, "tenant: unknown field"),
    ([1, 2], "must be a mapping"),
    ({"default": {"shares": 0}}, "default.shares"),
])
def test_bad_tenants_config_names_the_field(data, fragment):
    with pytest.raises(ValueError) as exc:
        parse_tenants(data, where="tenants.yaml")
    assert fragment in str(exc.value) and "tenants.yaml" in str(exc.value)


def test_unlisted_tenants_get_the_default_quota():
    cfg = parse_tenants({"tenants": {"a": {"max_gpus": 1}}, "default": {"max_jobs": 3}})
    assert cfg.quota("a").max_gpus == 1 and cfg.quota("zzz").max_jobs == 3 and cfg.quota(None).max_jobs == 3
    assert cfg.has_quotas and not parse_tenants({"tenants": {"a": {"shares": 2}}}).has_quotas


# ---------------------------------------------------------------------------------------------- fair share
@pytest.mark.parametrize("usage,shares,expect", [
    ({}, {"a": 1, "b": 1}, {"a": 1.0, "b": 1.0}),  # nobody used anything
    ({"a": 10}, {"a": 1, "b": 1}, {"a": 0.25, "b": 1.0}),  # a took it all of a half share
    ({"a": 5, "b": 5}, {"a": 1, "b": 1}, {"a": 0.5, "b": 0.5}),  # exactly their shares
    ({"a": 6, "b": 4}, {"a": 3, "b": 2}, {"a": 0.5, "b": 0.5}),  # shares weight: 60/40 of 3:2 is fair
    ({"a": 10}, {"a": 1}, {"a": 0.5}),  # alone: its whole share
])
def test_fair_share_factors(usage, shares, expect):
    got = fair_share_factors(usage, shares)
    assert got == pytest.approx(expect)


def test_usage_decays_with_the_half_life():
    assert decay_usage(100.0, 0.0, 3600, 3600) == pytest.approx(50.0)
    assert decay_usage(100.0, 0.0, 0, 3600) == 100.0
    # a constant rate for a short time adds about rate * dt; forever it tends to rate / ln2 * half-life
    assert decay_usage(0.0, 2.0, 10, 3600) == pytest.approx(20.0, rel=1e-2)
    assert decay_usage(0.0, 1.0, 1e9, 3600) == pytest.approx(3600 / 0.6931, rel=1e-3)
    # two steps are one step (exact for a constant rate)
    assert decay_usage(decay_usage(5.0, 1.0, 30, 60), 1.0, 30, 60) == pytest.approx(decay_usage(5.0, 1.0, 60, 60))


def test_fair_share_boost_orders_equal_priorities_but_not_across_them():
    jobs = [QueuedJob(f"a{i}", 50, 100.0 + i, (GPU,), tenant="a", boost_s=150.0) for i in range(5)]
    jobs.append(QueuedJob("b0", 50, 110.0, (GPU,), tenant="b", boost_s=600.0))  # later, under its share
    jobs.append(QueuedJob("hi", 60, 200.0, (GPU,), tenant="a", boost_s=0.0))
    free = {"n0": dict(GPU), "n1": dict(GPU)}
    d = decide_admission(AdmissionContext(tuple(jobs), free, 1e9, 0.0), now=300.0)
    assert d.admit == ["hi", "b0"]


# ---------------------------------------------------------------------------------------------- quota in admission
def test_admission_respects_quota_without_blocking_others():
    cfg = parse_tenants({"tenants": {"a": {"max_gpus": 2}}})
    jobs = [QueuedJob(f"a{i}", 50, float(i), (GPU,), tenant="a") for i in range(5)]
    jobs += [QueuedJob("b0", 50, 10.0, (GPU,), tenant="b")]
    free = {f"n{i}": dict(GPU) for i in range(4)}
    quota = QuotaView(cfg, {"a": Demand(gpus=1, cpus=1, jobs=1)})
    d = decide_admission(AdmissionContext(tuple(jobs), free, 0.0, 0.0), now=1e6, quota=quota)
    assert d.admit == ["a0", "b0"]  # a has 1 of 2 GPUs: one more; b is not held back by a's refusal
    assert d.blocked is None and d.reserved_for is None  # a quota refusal reserves nothing
    assert d.waiting == {f"a{i}": "tenant quota a 2/2 GPU" for i in range(1, 5)}
    assert quota.used["a"] == Demand(gpus=2, cpus=2, jobs=2)


def test_quota_refusal_and_capacity_wait_side_by_side():
    cfg = parse_tenants({"tenants": {"a": {"max_jobs": 1}}})
    jobs = (QueuedJob("a0", 50, 0.0, (GPU,), tenant="a"), QueuedJob("a1", 50, 1.0, (GPU, GPU), tenant="a"),
            QueuedJob("b0", 50, 2.0, (GPU, GPU), tenant="b"), QueuedJob("b1", 50, 3.0, (GPU,), tenant="b"))
    d = decide_admission(AdmissionContext(jobs, {"n0": dict(GPU), "n1": dict(GPU)}, 1e9, 0.0), now=10.0,
                         quota=QuotaView(cfg))
    assert d.admit == ["a0", "b1"]
    assert d.waiting == {"a1": "tenant quota a 1/1 jobs", "b0": "waiting for capacity"}
    assert d.blocked == "b0"


def test_admission_queue_keeps_quota_decisions_until_forgotten():
    cfg = parse_tenants({"tenants": {"a": {"max_jobs": 1}}})
    q = AdmissionQueue(1e9, 0.0)
    for i in range(3):
        q.put(QueuedJob(f"a{i}", 50, float(i), (GPU,), tenant="a"))
    free = {"n0": dict(GPU), "n1": dict(GPU)}
    held = QuotaView(cfg, {"a": Demand(jobs=1)})
    assert q.decide(free, 1.0, held).admit == []
    assert q.decide(free, 2.0, QuotaView(cfg)) is None  # nothing the queue sees changed: the caller must forget
    q.forget()
    assert q.decide(free, 3.0, QuotaView(cfg)).admit == ["a0"]


# ---------------------------------------------------------------------------------------------- preemption
def gang(jid, prio, node, lost=0.0, preemptible=True, recent=0, n=1):
    return RunningGang(jid, prio, tuple((node, dict(GPU)) for _ in range(n)), preemptible, lost, recent)


FULL = {"n0": {"CPU": 0.0, "GPU": 0.0}, "n1": {"CPU": 0.0, "GPU": 0.0}, "n2": {"CPU": 0.0, "GPU": 0.0}}


@pytest.mark.parametrize("running,waiter_bundles,waited,expect", [
    # lowest priority first
    ([gang("lo", 10, "n0"), gang("mid", 20, "n1"), gang("hi", 95, "n2")], 1, 700, ["lo"]),
    # preemptible: false is never chosen, even when lowest
    ([gang("keep", 5, "n0", preemptible=False), gang("lo", 10, "n1"), gang("x", 20, "n2")], 1, 700, ["lo"]),
    # equal priority: least lost work
    ([gang("old", 10, "n0", lost=500), gang("fresh", 10, "n1", lost=20), gang("x", 30, "n2")], 1, 700, ["fresh"]),
    # equal priority and lost work: fewest preemptions this hour
    ([gang("twice", 10, "n0", recent=1), gang("never", 10, "n1"), gang("x", 30, "n2")], 1, 700, ["never"]),
    # bounded: preempted max_per_hour times already -> not a candidate
    ([gang("tired", 10, "n0", recent=2), gang("x", 30, "n1"), gang("y", 40, "n2")], 1, 700, ["x"]),
    # not yet waited long enough
    ([gang("lo", 10, "n0")], 1, 100, []),
    # only higher or equal priority running: nobody
    ([gang("eq", 90, "n0"), gang("hi", 95, "n1"), gang("h2", 99, "n2")], 1, 700, []),
    # a gang of two needs two victims on two nodes (STRICT_SPREAD)
    ([gang("a", 10, "n0"), gang("b", 20, "n1"), gang("c", 30, "n2")], 2, 700, ["a", "b"]),
    # not enough room even preempting every candidate: nobody
    ([gang("a", 10, "n0"), gang("keep", 5, "n1", preemptible=False), gang("hi", 95, "n2")], 2, 700, []),
    # a victim whose room turns out not to be needed is spared
    ([gang("small", 10, "n0"), gang("big", 20, "n1", n=1), gang("z", 30, "n2")], 1, 700, ["small"]),
])
def test_preemption_table(running, waiter_bundles, waited, expect):
    w = Waiter("w", 90, tuple(dict(GPU) for _ in range(waiter_bundles)), "STRICT_SPREAD", 0.0)
    d = decide_preemption(PreemptionContext(w, tuple(running), FULL, 600.0, 2), now=float(waited))
    assert d.victims == expect, d.reason
    if not expect:
        assert d.reason


def test_preemption_spares_an_earlier_victim_not_needed():
    # w needs a 2-GPU node: 'lo' frees 1 GPU on n0 (not enough), 'mid' frees both of n1: 'lo' is spared
    free = {"n0": {"CPU": 1.0, "GPU": 0.0}, "n1": {"CPU": 0.0, "GPU": 0.0}}
    running = (RunningGang("lo", 10, (("n0", dict(GPU)),)),
               RunningGang("mid", 20, (("n1", dict(GPU)), ("n1", dict(GPU)))))
    w = Waiter("w", 90, ({"CPU": 1.0, "GPU": 2.0},), "PACK", 0.0)
    assert decide_preemption(PreemptionContext(w, running, free, 0.0, 2), now=1.0).victims == ["mid"]


# ---------------------------------------------------------------------------------------------- the loop
@pytest.fixture
def env(tmp_path):
    ops, clock = FakeOps(), Clock()
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    return core, ops, clock, tmp_path


def spec(name="j", **kw):
    return {"name": name, "entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 1}, **kw}


def tick(core, clock, n=1, dt=0.1):
    for _ in range(n):
        clock.t += dt
        core.reconcile_once()


def test_loop_quota_reason_visible_and_per_job_limit_at_submit(env):
    core, ops, clock, state = env
    (state / "tenants.yaml").write_text("tenants:\n  team-a:\n    max_gpus: 1\n    per_job: {max_workers: 2}\n")
    ids = []
    for i in range(3):
        ids.append(core.submit(spec(f"a{i}", tenant="team-a"))["id"])
        clock.t += 0.01
    b = core.submit(spec("b", tenant="team-b"))["id"]
    tick(core, clock, 3)
    states = {j: core.get(j)["state"] for j in ids + [b]}
    assert states[ids[0]] == "RUNNING" and states[b] == "RUNNING"
    for j in ids[1:]:
        job = core.get(j)
        assert job["state"] == "PENDING" and job["waiting"] == "tenant quota team-a 1/1 GPU"
    # the BudgetAutoscaler is not asked to rent for jobs their quota holds back (b, a0 run; none waits)
    assert [g["job_id"] for g in core.budget_queue()] == []
    with pytest.raises(InvalidJobSpec) as exc:
        core.submit(spec("big", tenant="team-a", num_workers=3))
    assert exc.value.field == "num_workers" and "max_workers 2" in exc.value.message
    assert len(core.list()) == 4  # nothing created
    view = core.tenants_view()
    a = next(t for t in view["tenants"] if t["tenant"] == "team-a")
    assert a["holding"]["gpus"] == 1 and a["queued"] == 2 and a["quota"]["max_gpus"] == 1
    # the quota raised in the file: applies without a restart
    (state / "tenants.yaml").write_text("tenants:\n  team-a:\n    max_gpus: 2\n")
    tick(core, clock, 3)
    assert core.get(ids[1])["state"] == "RUNNING" and core.get(ids[2])["state"] == "PENDING"
    # a broken file keeps the last good config and says why
    (state / "tenants.yaml").write_text("tenants: [")
    tick(core, clock, 2)
    assert core.tenants_view()["error"] and core.get(ids[2])["state"] == "PENDING"


def test_loop_fair_share_puts_a_later_team_ahead_of_a_flood(env, monkeypatch):
    core, ops, clock, _ = env
    monkeypatch.setattr(C, "FAIRSHARE_INTERVAL_S", 1.0)
    flood = [core.submit(spec(f"a{i}", tenant="team-a"))["id"] for i in range(10)]
    tick(core, clock, 3)
    running = [j for j in flood if core.get(j)["state"] == "RUNNING"]
    assert len(running) == 3  # 3 GPUs
    tick(core, clock, 30, dt=1.0)  # team-a holds the cluster: its usage grows
    late = [core.submit(spec(f"b{i}", tenant="team-b"))["id"] for i in range(2)]
    tick(core, clock, 2, dt=1.0)
    ops.finish(core.attempts[running[0]].refs)
    tick(core, clock, 3)
    ops.finish(core.attempts[running[1]].refs)
    tick(core, clock, 3)
    assert [core.get(j)["state"] for j in late] == ["RUNNING", "RUNNING"]
    assert sum(core.get(j)["state"] == "PENDING" for j in flood) == 7
    fs = {t["tenant"]: t["fair_share"] for t in core.tenants_view()["tenants"]}
    assert fs["team-b"] > fs["team-a"]
    # usage survives a Coordinator restart
    again = CoordinatorCore(core.state_dir, FakeOps(), clock=clock)
    assert again.tenancy.usage["team-a"] == pytest.approx(core.tenancy.usage["team-a"])


def test_loop_preempts_lowest_priority_checkpoint_first(env, monkeypatch):
    core, ops, clock, _ = env
    monkeypatch.setattr(C, "PREEMPT_AFTER_S", 5.0)
    monkeypatch.setattr(C, "PREEMPT_CHECK_INTERVAL_S", 0.0)
    monkeypatch.setattr(C, "PREEMPT_CHECKPOINT_WAIT_S", 3.0)
    keep = core.submit(spec("keep", priority=5, preemptible=False))["id"]
    lo = core.submit(spec("lo", priority=10))["id"]
    mid = core.submit(spec("mid", priority=20))["id"]
    tick(core, clock, 3)
    assert {core.get(j)["state"] for j in (keep, lo, mid)} == {"RUNNING"}
    hi = core.submit(spec("hi", priority=90))["id"]
    tick(core, clock, 3)
    assert core.get(hi)["state"] == "PENDING" and not core.preemption.in_flight
    tick(core, clock, 6, dt=1.0)  # waited past PREEMPT_AFTER_S
    assert set(core.preemption.in_flight) == {lo}
    assert core.evacuations.checkpoint_wanted(lo, core.get(lo)["attempt"])  # its ctx.should_checkpoint says yes once
    assert core.get(lo)["state"] == "RUNNING"
    tick(core, clock, 4, dt=1.0)  # no newer checkpoint came (no checkpoint manager): stopped at the wait
    job = core.get(lo)
    tick(core, clock, 3)
    assert core.get(hi)["state"] == "RUNNING"
    job = core.get(lo)
    assert job["state"] == "PENDING" and job["preempted"] == 1 and job["system_restarts"] == 0
    tr = [t for t in job["transitions"] if t["cause"] == "preempted"]
    assert len(tr) == 1 and tr[0]["from"] == "RUNNING" and tr[0]["to"] == "PENDING" and hi in tr[0]["reason"]
    assert core.get(keep)["state"] == "RUNNING" and core.get(mid)["state"] == "RUNNING"
    # hi finishes: lo runs again (a new attempt, from its checkpoint)
    ops.finish(core.attempts[hi].refs)
    tick(core, clock, 4)
    assert core.get(lo)["state"] == "RUNNING" and core.get(lo)["attempt"] == 2


def test_loop_preemption_bounded_per_hour(env, monkeypatch):
    core, ops, clock, _ = env
    monkeypatch.setattr(C, "PREEMPT_AFTER_S", 1.0)
    monkeypatch.setattr(C, "PREEMPT_CHECK_INTERVAL_S", 0.0)
    monkeypatch.setattr(C, "PREEMPT_CHECKPOINT_WAIT_S", 0.0)
    monkeypatch.setattr(C, "PREEMPT_MAX_PER_HOUR", 1)
    ops.total = {"n0": {"CPU": 2.0, "GPU": 1.0}}
    lo = core.submit(spec("lo", priority=10))["id"]
    tick(core, clock, 3)
    for i in range(2):
        hi = core.submit(spec(f"hi{i}", priority=90))["id"]
        tick(core, clock, 5, dt=1.0)
        if i == 0:
            assert core.get(hi)["state"] == "RUNNING" and core.get(lo)["preempted"] == 1
            ops.finish(core.attempts[hi].refs)
            tick(core, clock, 4)
            assert core.get(lo)["state"] == "RUNNING"
        else:  # once per hour: lo is no longer a candidate
            assert core.get(hi)["state"] == "PENDING" and core.get(lo)["state"] == "RUNNING"
            assert core.get(lo)["preempted"] == 1
    ops.finish(core.attempts[lo].refs, RankStatus.OK)
    tick(core, clock, 3)
    assert core.get(lo)["state"] == "SUCCEEDED"


def test_loop_no_second_victim_while_the_first_ones_room_shows(env, monkeypatch):
    """Freed resources take a moment to show in Ray's view: the waiter gets PREEMPT_GRACE_S to be
    placed on its victim's room before anyone else is preempted for it."""
    core, ops, clock, _ = env
    for k, v in (("PREEMPT_AFTER_S", 1.0), ("PREEMPT_CHECK_INTERVAL_S", 0.0), ("PREEMPT_CHECKPOINT_WAIT_S", 0.0),
                 ("PREEMPT_GRACE_S", 20.0)):
        monkeypatch.setattr(C, k, v)
    ids = [core.submit(spec(f"lo{i}", priority=10 + i))["id"] for i in range(3)]
    tick(core, clock, 3)
    stale = core.nodes.totals_and_free(0.0)  # the full cluster, as Ray shows it for a while
    monkeypatch.setattr(core.nodes, "totals_and_free", lambda max_age_s=0.0: stale)
    hi = core.submit(spec("hi", priority=90))["id"]
    tick(core, clock, 6, dt=1.0)
    assert core.get(ids[0])["preempted"] == 1
    tick(core, clock, 15, dt=1.0)  # hi still not placed (stale view), but within the grace
    assert [core.get(j)["preempted"] for j in ids] == [1, 0, 0] and core.get(hi)["state"] == "PENDING"
    monkeypatch.undo()
    monkeypatch.setattr(C, "PREEMPT_GRACE_S", 20.0)
    tick(core, clock, 3)
    assert core.get(hi)["state"] == "RUNNING"
    assert [core.get(j)["preempted"] for j in ids] == [1, 0, 0]


def test_cli_tenants_set_checks_the_file_and_installs_it(tmp_path, capsys):
    from raycluster.cli.main import main

    state = tmp_path / "state"
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants:\n  team-a:\n    max_gpu: 3\n")
    assert main(["--state-dir", str(state), "tenants", "--set", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "tenants.team-a.max_gpu: unknown field" in err
    assert not (state / "tenants.yaml").exists()  # nothing installed
    assert main(["--state-dir", str(state), "--json", "tenants", "--set", "configs/tenants.yaml"]) == 0
    out = capsys.readouterr().out
    assert '"team-a"' in out and (state / "tenants.yaml").read_text() == open("configs/tenants.yaml").read()


def test_a_new_tenants_first_job_gets_its_boost_at_once(env, monkeypatch):
    """Issue 20: a new tenant's jobs had boost 0 until the next fair-share pass (up to 10 s)."""
    core, ops, clock, _ = env
    monkeypatch.setattr(C, "FAIRSHARE_INTERVAL_S", 1.0)
    flood = [core.submit(spec(f"a{i}", tenant="team-a"))["id"] for i in range(6)]
    tick(core, clock, 30, dt=1.0)  # team-a holds the cluster: its usage grows, its boost shrinks
    monkeypatch.setattr(C, "FAIRSHARE_INTERVAL_S", 3600.0)  # no fair-share pass from here on
    clock.t += 1
    late = core.submit(spec("b0", tenant="team-new"))["id"]
    tick(core, clock, 1)
    order = [j.job_id for j in core.queue.ordered()]
    waiting_a = [j for j in flood if core.get(j)["state"] == "PENDING"]
    assert waiting_a and order.index(late) < min(order.index(j) for j in waiting_a)
    boost = {j.job_id: j.boost_s for j in core.queue.ordered()}
    assert boost[late] == pytest.approx(C.FAIRSHARE_WINDOW_S) and boost[waiting_a[0]] < boost[late]


def test_a_batch_starts_in_the_order_it_was_submitted(env):
    """Issue 20: every job of a batch had the same queued_at; ties broke on random ids."""
    core, ops, clock, _ = env
    made = core.submit_many([{"spec": spec(f"j{i:02d}")} for i in range(20)])
    assert [j["name"] for j in made] == [f"j{i:02d}" for i in range(20)]
    tick(core, clock, 1)
    started = sorted((j for j in core.list() if j["state"] != "PENDING"), key=lambda j: j["name"])
    assert [j["name"] for j in started] == ["j00", "j01", "j02"]  # 3 GPUs: the first three
    assert [core.store.get(j.job_id).name for j in core.queue.ordered()] == [f"j{i:02d}" for i in range(3, 20)]
