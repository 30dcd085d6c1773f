"""Admission policy: pure, parametrized, no cluster."""

import pytest

from raycluster.policy.admission import AdmissionContext, QueuedJob, decide_admission
from raycluster.policy.placement import infeasible_reason, place

GPU1 = {"CPU": 1.0, "GPU": 1.0}


def nodes(n, gpus=1.0, cpus=2.0):
    return {f"n{i}": {"CPU": cpus, "GPU": gpus} for i in range(n)}


def job(jid, prio, t, workers=1, bundle=GPU1, strategy="PACK"):
    return QueuedJob(jid, prio, t, tuple(dict(bundle) for _ in range(workers)), strategy)


def decide(queue, free, now=100.0, starvation=300.0, aging=0.0):
    return decide_admission(AdmissionContext(tuple(queue), free, starvation, aging), now)


@pytest.mark.parametrize(
    "queue, free, expected",
    [
        # higher priority first, even if submitted later
        ([job("low", 10, 1), job("high", 90, 2)], nodes(1), ["high"]),
        # FIFO within a priority
        ([job("b", 50, 2), job("a", 50, 1)], nodes(1), ["a"]),
        # ties on time break by id, deterministically
        ([job("y", 50, 1), job("x", 50, 1)], nodes(1), ["x"]),
        # three jobs run concurrently when capacity allows
        ([job("a", 80, 1), job("b", 50, 2), job("c", 20, 3)], nodes(3), ["a", "b", "c"]),
        # a gang starts only when all of it fits: 3 workers on 2 GPUs -> nothing; the 1-worker job backfills
        ([job("gang", 90, 1, workers=3), job("small", 10, 2)], nodes(2), ["small"]),
        # whole gang fits -> admitted along with what else fits
        ([job("gang", 90, 1, workers=2), job("small", 10, 2)], nodes(3), ["gang", "small"]),
        # fractional GPUs pack several small tasks per GPU
        ([job(f"s{i}", 50, i, bundle={"CPU": 0.5, "GPU": 0.25}) for i in range(4)], nodes(1), ["s0", "s1", "s2", "s3"]),
        # nothing fits -> nothing admitted
        ([job("a", 50, 1)], {"n0": {"CPU": 2.0, "GPU": 0.0}}, []),
    ],
)
def test_order_and_gangs(queue, free, expected):
    assert decide(queue, free).admit == expected


def test_backfill_until_starvation_threshold_then_reservation():
    big = job("big", 90, 0.0, workers=3)
    small = job("small", 10, 50.0)
    free = nodes(2)  # big needs 3 GPUs; 2 free now
    early = decide([big, small], free, now=100.0, starvation=300.0)
    assert early.admit == ["small"] and early.reserved_for is None
    late = decide([big, small], free, now=400.0, starvation=300.0)
    assert late.admit == [] and late.reserved_for == "big"
    assert "reserved" in late.waiting["small"]


def test_reservation_does_not_block_jobs_ahead_of_it():
    first = job("first", 95, 0.0)
    big = job("big", 90, 0.0, workers=3)
    res = decide([big, first], nodes(2), now=1000.0)
    assert res.admit == ["first"] and res.reserved_for == "big"


def test_aging_lets_an_old_low_priority_job_overtake():
    old = job("old", 10, 0.0)
    new = job("new", 50, 9000.0)
    assert decide([old, new], nodes(1), now=9000.0, aging=100.0).admit == ["old"]  # 10 + 90 > 50
    assert decide([old, new], nodes(1), now=9000.0, aging=0.0).admit == ["new"]


def test_admission_accounts_for_what_it_just_admitted():
    q = [job(f"j{i}", 50, i) for i in range(5)]
    assert decide(q, nodes(3)).admit == ["j0", "j1", "j2"]


@pytest.mark.parametrize(
    "strategy, workers, free, fits",
    [
        ("STRICT_SPREAD", 3, nodes(3), True),
        ("STRICT_SPREAD", 3, nodes(2, gpus=4, cpus=8), False),
        ("STRICT_PACK", 2, nodes(2), False),
        ("STRICT_PACK", 2, nodes(1, gpus=2, cpus=2), True),
        ("SPREAD", 4, nodes(2, gpus=2, cpus=4), True),
        ("PACK", 4, nodes(2, gpus=2, cpus=4), True),
    ],
)
def test_strategies(strategy, workers, free, fits):
    assert (place([GPU1] * workers, free, strategy) is not None) == fits


def test_spread_spreads_and_pack_packs():
    nodes4 = nodes(2, gpus=2, cpus=4)
    assert sorted(place([GPU1] * 2, nodes4, "SPREAD")[0]) == ["n0", "n1"]
    assert len(set(place([GPU1] * 2, nodes4, "PACK")[0])) == 1


def test_infeasible_reason_names_the_shortage():
    why = infeasible_reason([GPU1] * 8, "PACK", nodes(3))
    assert why and "GPU 8 > 3" in why
    assert infeasible_reason([GPU1] * 3, "STRICT_SPREAD", nodes(2, gpus=4, cpus=8)) is not None
    assert infeasible_reason([GPU1] * 3, "SPREAD", nodes(3)) is None
    assert infeasible_reason([GPU1], "PACK", {}) == "the cluster has no nodes"


def test_a_pass_tries_each_lane_once_when_nothing_fits(monkeypatch):
    """5,000 queued gangs of 3 lanes on a full cluster: 3 placements tried, not 5,000; every job
    still gets its waiting reason."""
    from raycluster.policy import placement

    tried = []
    real = placement.FreeView.place
    monkeypatch.setattr(placement.FreeView, "place", lambda self, *a: tried.append(a) or real(self, *a))
    gangs = [({"CPU": 1.0, "GPU": 1.0},), ({"CPU": 1.0, "GPU": 1.0},) * 2, ({"CPU": 1.0, "GPU": 1.0},) * 4]
    queue = [QueuedJob(f"j{i}", 50, float(i), gangs[i % 3], "SPREAD") for i in range(5000)]
    free = {f"n{i}": {"CPU": 8.0, "GPU": 0.0} for i in range(100)}
    d = decide_admission(AdmissionContext(tuple(queue), free, 1e9, 600.0), 10.0)
    assert d.admit == [] and d.blocked == "j0" and len(tried) == 3
    assert d.waiting == {f"j{i}": "waiting for capacity" for i in range(5000)}
