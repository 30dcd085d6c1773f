"""Elastic gangs (``num_workers: {min, max}``) without a cluster: the spec, the sizing and grow
rules (pure tables), admission at the largest size that fits, the global data position (exactly
once across world-size changes), a checkpoint restored at another world size, and the loop driven
by a fake RayOps: start at what fits, shrink when a node is lost, grow back at a checkpoint."""

from __future__ import annotations

from collections import Counter

import pytest

from raycluster import constants as C
from raycluster.control.core import CoordinatorCore
from raycluster.errors import InvalidJobSpec
from raycluster.policy.admission import AdmissionContext, QueuedJob, decide_admission
from raycluster.policy.elastic import GrowContext, decide_grow, size_that_fits, with_gang_back
from raycluster.policy.recovery import RankStatus
from raycluster.policy.tenants import QuotaView, TenantQuota, TenantsConfig
from raycluster.rank.data import GlobalSampler
from raycluster.spec import parse_spec
from raycluster.store.lifecycle import Cause
from tests.fakes import Clock, FakeOps, record_spot_cluster


def spec(**kw):
    return {"name": "e", "entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 1}, **kw}


# ---------------------------------------------------------------- the spec
def test_num_workers_min_max_is_an_elastic_gang_and_round_trips():
    s = parse_spec(spec(num_workers={"min": 2, "max": 8}))
    assert (s.num_workers, s.min_workers, s.elastic, list(s.sizes())) == (8, 2, True, [8, 7, 6, 5, 4, 3, 2])
    again = parse_spec(s.model_dump(mode="json"))  # as stored on the job row
    assert (again.num_workers, again.min_workers) == (8, 2)
    plain = parse_spec(spec(num_workers=4))
    assert (plain.min_workers, plain.elastic, list(plain.sizes())) == (None, False, [4])
    assert not parse_spec(spec(num_workers={"min": 3, "max": 3})).elastic  # the plain 3


@pytest.mark.parametrize("nw, field, words", [
    ({"min": 5, "max": 2}, "num_workers.min", "min 5 is over max 2"),
    ({"min": 2}, "num_workers", "{min: M, max: N}"),
    ({"min": 0, "max": 2}, "num_workers.min", "whole number from 1"),
    ({"min": "two", "max": 4}, "num_workers.min", "got 'two'"),
    ({"min": 1, "max": 3, "step": 1}, "num_workers", "unknown key(s) step"),
    ({"min": 1, "max": 10 ** 6}, "num_workers.max", "whole number"),
])
def test_a_bad_elastic_size_is_refused_naming_the_field(nw, field, words):
    with pytest.raises(InvalidJobSpec) as err:
        parse_spec(spec(num_workers=nw))
    assert err.value.field == field and words in str(err.value)


def test_a_sweep_cannot_be_elastic():
    with pytest.raises(InvalidJobSpec) as err:
        parse_spec(spec(num_workers={"min": 1, "max": 2}, trials=[{"lr": 0.1}]))
    assert err.value.field == "num_workers" and "sweep" in str(err.value)


# ---------------------------------------------------------------- sizing and growing (pure)
GPU = {"CPU": 1.0, "GPU": 1.0}


@pytest.mark.parametrize("free_gpus, strategy, sizes, want", [
    ([1, 1, 1, 1], "PACK", range(4, 1, -1), 4),
    ([1, 1, 1, 0], "PACK", range(4, 1, -1), 3),
    ([2, 1, 0, 0], "STRICT_SPREAD", range(4, 1, -1), 2),
    ([1, 0, 0, 0], "PACK", range(4, 1, -1), None),
    ([4, 0, 0, 0], "STRICT_PACK", range(4, 1, -1), 4),
    ([3, 1, 0, 0], "STRICT_PACK", range(4, 1, -1), 3),
])
def test_size_that_fits_is_the_largest_size_the_free_room_holds(free_gpus, strategy, sizes, want):
    free = {f"n{i}": {"CPU": 4.0, "GPU": float(g)} for i, g in enumerate(free_gpus)}
    assert size_that_fits(GPU, sizes, free, strategy) == want


def test_a_gangs_own_room_is_counted_back_when_it_may_grow():
    free = {"n0": {"CPU": 1.0, "GPU": 0.0}, "n1": {"CPU": 2.0, "GPU": 1.0}}
    back = with_gang_back(free, GPU, ["n0", "n2"])
    assert back == {"n0": {"CPU": 2.0, "GPU": 1.0}, "n1": {"CPU": 2.0, "GPU": 1.0}, "n2": {"CPU": 1.0, "GPU": 1.0}}
    assert free["n0"] == {"CPU": 1.0, "GPU": 0.0}  # (not changed in place)
    assert size_that_fits(GPU, range(4, 2, -1), back, "STRICT_SPREAD") == 3


def grow_ctx(**kw):
    base = dict(job_id="j", world_size=3, max_workers=4, running_for_s=60.0, moving=False, fits=4,
                queue_waits=False)
    return GrowContext(**{**base, **kw})


@pytest.mark.parametrize("kw, to, why", [
    ({}, 4, "room for 4 of 4"),
    ({"fits": 6}, 4, "room for 4 of 4"),  # never past max
    ({"world_size": 2, "fits": 3}, 3, "room for 3 of 4"),
    ({"world_size": 4}, None, "largest size"),
    ({"moving": True}, None, "being moved"),
    ({"queue_waits": True}, None, "queued job waits"),
    ({"running_for_s": 10.0}, None, "resized 10 s ago"),
    ({"fits": 3}, None, "no room"),
    ({"fits": None}, None, "no room"),
])
def test_decide_grow(kw, to, why):
    d = decide_grow(grow_ctx(**kw), grow_interval_s=30.0)
    assert d.to_size == to and why in d.reason


# ---------------------------------------------------------------- admission
def q(job_id, n, min_bundles=None, priority=50, at=0.0, tenant=None):
    return QueuedJob(job_id, priority, at, tuple(dict(GPU) for _ in range(n)), "PACK", tenant=tenant,
                     min_bundles=min_bundles)


def free_of(gpus):
    return {f"n{i}": {"CPU": 4.0, "GPU": float(g)} for i, g in enumerate(gpus)}


def test_admission_starts_an_elastic_gang_at_the_largest_size_that_fits():
    d = decide_admission(AdmissionContext((q("e", 8, 2),), free_of([2, 1, 0]), 600.0, 0.0), now=1.0)
    assert d.admit == ["e"] and d.sizes == {"e": 3} and len(d.placements["e"]) == 3


def test_an_elastic_gang_below_its_minimum_waits_and_blocks_like_a_gang():
    d = decide_admission(AdmissionContext((q("e", 8, 4), q("small", 1, at=1.0)), free_of([2, 1]), 600.0, 0.0),
                         now=2.0)
    assert d.admit == ["small"] and d.blocked == "e" and "e" not in d.sizes  # backfilled behind it
    d = decide_admission(AdmissionContext((q("e", 8, 4), q("small", 1, at=1.0)), free_of([2, 1]), 600.0, 0.0),
                         now=1000.0)
    assert d.admit == [] and d.reserved_for == "e"  # past the starvation threshold: it holds a reservation


def test_a_rigid_gang_of_the_same_shape_is_unchanged():
    d = decide_admission(AdmissionContext((q("r", 4),), free_of([2, 1]), 600.0, 0.0), now=1.0)
    assert d.admit == [] and d.blocked == "r" and d.sizes == {}


def test_an_elastic_gang_takes_the_size_its_tenants_quota_allows():
    cfg = TenantsConfig(tenants={"a": TenantQuota(max_gpus=2)})
    quota = QuotaView(cfg, {})
    d = decide_admission(AdmissionContext((q("e", 4, 1, tenant="a"),), free_of([4]), 600.0, 0.0), now=1.0,
                         quota=quota)
    assert d.sizes == {"e": 2}
    quota = QuotaView(TenantsConfig(tenants={"a": TenantQuota(max_gpus=1)}), {})
    d = decide_admission(AdmissionContext((q("e", 4, 2, tenant="a"),), free_of([4]), 600.0, 0.0), now=1.0,
                         quota=quota)
    # even its smallest size is over the quota: it waits for that reason, blocking nothing
    assert d.admit == [] and d.blocked is None and d.groups == [("tenant quota a 0/1 GPU", ["e"])]


# ---------------------------------------------------------------- the data position
def run_epoch_at_sizes(sampler_state, plan, num_samples=50, global_batch=8):
    """Train steps at each (world size, steps) of ``plan``, the position saved and resumed between
    them as a checkpoint would; every id each rank got, in order."""
    seen = []
    for world, steps in plan:
        samplers = [GlobalSampler(num_samples, rank=r, world_size=world, seed=7) for r in range(world)]
        for s in samplers:
            if sampler_state is not None:
                s.load_state_dict(sampler_state)
        for _ in range(steps):
            parts = [s.next_batch(global_batch=global_batch) for s in samplers]
            assert len({s.position for s in samplers}) == 1  # every rank at the same global position
            sizes = [len(p) for p in parts]
            assert max(sizes) - min(sizes) <= 1  # shares differ by one sample at most
            seen.extend(i for p in parts for i in p)
        sampler_state = samplers[0].state_dict()
    return seen, sampler_state


def test_the_data_is_seen_exactly_once_across_shrink_and_grow():
    # 3 epochs of 50 samples (7 steps each: 6 of 8 and one of 2), at 4 ranks, then 3, then 4 again
    seen, _ = run_epoch_at_sizes(None, [(4, 5), (3, 9), (4, 7)])
    epochs = [seen[i * 50:(i + 1) * 50] for i in range(3)]
    for ids in epochs:
        assert sorted(ids) == list(range(50))  # no sample skipped, none repeated
    assert epochs[0] != epochs[1]  # a new order each epoch
    # ... the same ids in the same order as an undisturbed run at one size
    assert seen == run_epoch_at_sizes(None, [(2, 21)])[0]


def test_an_unchanged_world_size_resumes_exactly():
    ranks_a = [GlobalSampler(40, rank=r, world_size=2, seed=1) for r in range(2)]
    for _ in range(3):
        for s in ranks_a:
            s.next_batch(per_rank_batch=3)
    saved = ranks_a[1].state_dict()
    after = [s.next_batch(per_rank_batch=3) for s in ranks_a]
    resumed = [GlobalSampler(40, rank=r, world_size=2, seed=1) for r in range(2)]
    for s in resumed:
        s.load_state_dict(saved)
    assert [s.next_batch(per_rank_batch=3) for s in resumed] == after


def test_the_sampler_refuses_bad_use_clearly():
    with pytest.raises(ValueError, match="exactly one"):
        GlobalSampler(10).next_batch()
    with pytest.raises(ValueError, match="rank 3 is not in a world of 2"):
        GlobalSampler(10, rank=3, world_size=2)
    with pytest.raises(ValueError, match="over other data"):
        GlobalSampler(10).load_state_dict(GlobalSampler(12).state_dict())


# ---------------------------------------------------------------- a checkpoint at another world size
class _CM:
    """The CheckpointManager's ``candidates`` answered from a real registry (no actor)."""

    def __init__(self, registry):
        self.registry = registry

    class _Remote:
        def __init__(self, fn):
            self.remote = fn

    def __getattr__(self, name):
        return self._Remote(getattr(self.registry, name))


def test_an_elastic_rank_restores_a_checkpoint_of_another_world_size(tmp_path, monkeypatch):
    import io

    import torch

    from raycluster.rank import context as ctxmod
    from raycluster.store.checkpoints import CheckpointRegistry

    reg = CheckpointRegistry(tmp_path / "ck.db")
    root = tmp_path / "ckpt"
    for rank in range(4):  # a complete checkpoint at world size 4: each rank's own state
        buf = io.BytesIO()
        torch.save({"step": 10, "rank": rank, "world_size": 4, "state": {"rank": rank},
                    "rng": ctxmod.capture_rng()}, buf)
        path = ctxmod.shard_path(root, "j", 10, rank)
        ctxmod.storage.write_bytes(path, buf.getvalue())
        import hashlib

        reg.commit_shard("j", 10, rank, 4, path, hashlib.sha256(buf.getvalue()).hexdigest(), len(buf.getvalue()),
                         1, 3)
    monkeypatch.setattr("ray.get", lambda v, **kw: v)  # (the registry answers in-process)

    def ctx(rank, world, elastic):
        return ctxmod.TrainContext(job_id="j", attempt=2, rank=rank, world_size=world, config={},
                                   checkpoint_root=str(root), checkpoint_policy={}, checkpoint_manager=_CM(reg),
                                   elastic=elastic)

    assert ctx(0, 3, elastic=False).restore() is None  # a rigid gang never mixes world sizes
    got = [ctx(r, 5, elastic=True) for r in range(5)]
    states = [c.restore() for c in got]
    assert [s["rank"] for s in states] == [0, 1, 2, 3, 0]  # its own shard, else rank 0's
    assert {c.restored_step for c in got} == {10} and {c.restored_world_size for c in got} == {4}


# ---------------------------------------------------------------- the loop, through a fake RayOps
def tick(core, clock, dt=0.1):
    clock.t += dt
    core.reconcile_once()


def test_the_loop_starts_at_what_fits_shrinks_on_node_loss_and_grows_back(tmp_path):
    ops, clock = FakeOps(nodes=3), Clock()  # 3 nodes of 1 GPU
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    jid = core.submit(spec(num_workers={"min": 2, "max": 4}, max_restarts=3))["id"]
    tick(core, clock), tick(core, clock)
    job = core.get(jid)
    assert job["state"] == "RUNNING" and job["world_size"] == 3  # 3 of 4: what the cluster holds
    assert "at 3 of 4 workers (elastic)" in job["transitions"][1]["reason"]
    refs = core.attempts[jid].refs
    assert [ops.launches[r]["world_size"] for r in refs] == [3, 3, 3] and ops.launches[refs[0]]["elastic"]
    # a node is lost: the gang is placed again at 2 at once, no replacement waited for
    lost = core.attempts[jid].nodes[2]
    del ops.total[lost]
    ops.finish(refs[2:], RankStatus.SYSTEM_ERROR, "NodeDiedError", Cause.NODE_LOST)
    ops.finish(refs[:2], RankStatus.USER_ERROR, "RuntimeError: Connection closed by peer")  # its peers
    tick(core, clock, C.FAILURE_SETTLE_S)
    assert core.get(jid)["state"] == "RECOVERING"
    tick(core, clock)  # sized only once Ray's free view shows the room the attempt gave back
    assert core.get(jid)["state"] == "RECOVERING"
    tick(core, clock, C.ELASTIC_SETTLE_S), tick(core, clock)
    job = core.get(jid)
    assert (job["state"], job["attempt"], job["world_size"]) == ("RUNNING", 2, 2)
    assert len(core.attempts[jid].refs) == 2
    # room returns (two nodes): not before the grow interval, then checkpoint and placed again at 4
    ops.total.update({"n7": {"CPU": 2.0, "GPU": 1.0}, "n8": {"CPU": 2.0, "GPU": 1.0}})
    tick(core, clock, 1.0)
    assert jid not in core.evacuations.moves and "resized" in core.resizes.last_decisions[jid]
    clock.t += C.ELASTIC_GROW_INTERVAL_S
    tick(core, clock)
    move = core.evacuations.moves[jid]
    assert move.cause == Cause.ELASTIC_GROW and "room for 4 of 4" in move.reason
    assert core.evacuations.checkpoint_wanted(jid, 2)  # rank 0 is asked for a checkpoint first
    clock.t += C.ELASTIC_GROW_WAIT_S  # (no checkpoint came: placed again from its newest after the wait)
    for _ in range(3):
        tick(core, clock, C.EVACUATE_CHECK_INTERVAL_S)
    tick(core, clock, C.ELASTIC_SETTLE_S)
    job = core.get(jid)
    assert (job["state"], job["attempt"], job["world_size"]) == ("RUNNING", 3, 4), job["transitions"][-3:]
    causes = [t["cause"] for t in job["transitions"]]
    assert causes.count("elastic_grow") == 1 and job["system_restarts"] == 1  # the grow spent no restart
    # at its largest: nothing more to do
    tick(core, clock, C.ELASTIC_GROW_INTERVAL_S + 1)
    assert jid not in core.evacuations.moves


def test_an_elastic_gang_does_not_grow_into_room_a_queued_job_waits_for(tmp_path):
    ops, clock = FakeOps(nodes=3), Clock()
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    big = core.submit(spec(name="big", num_workers=3, priority=90))["id"]
    tick(core, clock), tick(core, clock)
    el = core.submit(spec(num_workers={"min": 1, "max": 3}, priority=10))["id"]
    waiting = core.submit(spec(name="w", num_workers=2, priority=50))["id"]
    ops.finish(core.attempts[big].refs)
    tick(core, clock), tick(core, clock)
    # `w` (priority 50) is admitted first at 2, the elastic gang takes the last GPU at 1
    assert core.get(waiting)["state"] == "RUNNING" and core.get(el)["world_size"] == 1
    other = core.submit(spec(name="other", num_workers=2, priority=60))["id"]
    ops.finish(core.attempts[waiting].refs)  # room for 2 more: but `other` waits for it
    tick(core, clock)
    tick(core, clock, C.ELASTIC_GROW_INTERVAL_S + 1)
    assert core.get(other)["state"] in ("PLACING", "RUNNING")
    assert el not in core.evacuations.moves
    assert Counter(t["cause"] for t in core.get(el)["transitions"])["elastic_grow"] == 0


def test_on_an_elastic_cluster_a_queued_elastic_gang_is_rented_for_at_its_smallest(tmp_path):
    """What Ray's autoscaler is told and what the BudgetAutoscaler rents for: a queued elastic gang at
    its smallest size. (Told at its largest — more than may be rented — Ray's autoscaler, which meets
    a request whole or not at all, rented nothing: bench_cost's live elastic run wedged so.)"""
    record_spot_cluster(tmp_path, max_workers=3, spot_max_workers=3)
    ops, clock = FakeOps(nodes=0), Clock()
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    ids = [core.submit(spec(name=f"e{i}", num_workers={"min": 1, "max": 2}))["id"] for i in range(3)]
    tick(core, clock)
    assert ops.requested[-1] == [{"CPU": 1.0, "GPU": 1.0}] * 3  # one bundle each, not two
    assert [g["bundles"] for g in core.budget_queue()] == [1, 1, 1]
    # a node joins: one gang starts at 1 (all there is); it is then told at its size
    ops.total["n0"] = {"CPU": 2.0, "GPU": 1.0}
    tick(core, clock), tick(core, clock)
    jobs = [core.get(i) for i in ids]
    assert sorted((j["state"], j["world_size"]) for j in jobs) == [("PENDING", None), ("PENDING", None),
                                                                   ("RUNNING", 1)]
    assert ops.requested[-1] == [{"CPU": 1.0, "GPU": 1.0}] * 3  # 1 running + 2 queued at their smallest
