"""The fast admission pass (policy/admission.py: FreeView) decides exactly what the straightforward
reference (tests/unit/admission_reference.py, the policy as it was) decides, on random queues and
clusters: same admitted jobs in the same order, same reservation, same waiting reasons, and for a
single gang the same nodes and the same remaining free resources."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raycluster.policy import admission as fast
from raycluster.policy import placement
from tests.unit import admission_reference as ref

STRATEGIES = ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]

node_res = st.fixed_dictionaries(
    {"CPU": st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0, 8.0]), "GPU": st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0])},
    optional={"memory": st.sampled_from([0.0, 1e9, 4e9])})
bundle = st.fixed_dictionaries(
    {"CPU": st.sampled_from([0.5, 1.0, 2.0])},
    optional={"GPU": st.sampled_from([0.25, 0.5, 1.0, 2.0]), "memory": st.sampled_from([5e8, 2e9])})


@st.composite
def gangs(draw):
    n = draw(st.integers(1, 4))
    if draw(st.booleans()):  # identical bundles, as every JobSpec makes
        return tuple([draw(bundle)] * n)
    return tuple(draw(bundle) for _ in range(n))


@st.composite
def clusters(draw):
    n = draw(st.integers(0, 8))
    return {f"n{i}": draw(node_res) for i in range(n)}


@st.composite
def contexts(draw, module):
    jobs = []
    for i in range(draw(st.integers(0, 12))):
        jobs.append(module.QueuedJob(f"j{i}", draw(st.sampled_from([0, 10, 50, 51, 90])),
                                     float(draw(st.integers(0, 1000))), draw(gangs()),
                                     draw(st.sampled_from(STRATEGIES))))
    return jobs


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(free=clusters(), gang=gangs(), strategy=st.sampled_from(STRATEGIES))
def test_place_matches_the_reference(free, gang, strategy):
    assert placement.place(gang, free, strategy) == ref.place(gang, free, strategy)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(free=clusters(), jobs=contexts(ref), threshold=st.sampled_from([0.0, 100.0, 1e9]),
       aging=st.sampled_from([0.0, 512.0, 600.0]), now=st.sampled_from([0.0, 500.0, 1000.0, 2000.0]))
def test_decide_admission_matches_the_reference(free, jobs, threshold, aging, now):
    want = ref.decide_admission(ref.AdmissionContext(tuple(jobs), free, threshold, aging), now)
    fast_jobs = tuple(fast.QueuedJob(j.job_id, j.priority, j.queued_at, j.bundles, j.strategy) for j in jobs)
    got = fast.decide_admission(fast.AdmissionContext(fast_jobs, free, threshold, aging), now)
    assert (got.admit, got.reserved_for, got.waiting) == (want.admit, want.reserved_for, want.waiting)


@st.composite
def crowded_queues(draw):
    """Many jobs of few shapes (so lanes hold many jobs), on GPU/CPU-only or memory-bound bundles."""
    shapes = [{"CPU": 1.0, "GPU": 1.0}, {"CPU": 0.5, "GPU": 0.5}, {"CPU": 1.0, "memory": 2e9}, {"CPU": 2.0}]
    jobs = []
    for i in range(draw(st.integers(0, 40))):
        b = draw(st.sampled_from(shapes))
        jobs.append(ref.QueuedJob(f"j{i}", draw(st.sampled_from([10, 50])), float(draw(st.integers(0, 1000))),
                                  tuple([b] * draw(st.integers(1, 3))), draw(st.sampled_from(STRATEGIES))))
    return jobs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(free=clusters(), jobs=crowded_queues(), threshold=st.sampled_from([0.0, 100.0, 1e9]),
       now=st.sampled_from([500.0, 2000.0]))
def test_crowded_lanes_decide_like_the_reference(free, jobs, threshold, now):
    """Lanes of many identical gangs: dropping a lane at its first refusal loses no admission."""
    want = ref.decide_admission(ref.AdmissionContext(tuple(jobs), free, threshold, 600.0), now)
    fast_jobs = tuple(fast.QueuedJob(j.job_id, j.priority, j.queued_at, j.bundles, j.strategy) for j in jobs)
    got = fast.decide_admission(fast.AdmissionContext(fast_jobs, free, threshold, 600.0), now)
    assert (got.admit, got.reserved_for, got.waiting) == (want.admit, want.reserved_for, want.waiting)


@settings(max_examples=200, deadline=None)
@given(free=clusters(), gang=gangs(), strategy=st.sampled_from(STRATEGIES))
def test_infeasible_reason_matches_the_reference(free, gang, strategy):
    assert placement.infeasible_reason(list(gang), strategy, free) == ref.infeasible_reason(list(gang), strategy, free)


def test_the_input_is_never_modified():
    free = {"a": {"CPU": 2.0, "GPU": 1.0}, "b": {"CPU": 2.0, "GPU": 1.0}}
    jobs = tuple(fast.QueuedJob(f"j{i}", 50, float(i), ({"CPU": 1.0, "GPU": 1.0},), "PACK") for i in range(3))
    d = fast.decide_admission(fast.AdmissionContext(jobs, free, 300.0, 600.0), 10.0)
    assert d.admit == ["j0", "j1"] and free == {"a": {"CPU": 2.0, "GPU": 1.0}, "b": {"CPU": 2.0, "GPU": 1.0}}


@st.composite
def queue_histories(draw):
    """A queue changed step by step: jobs added, removed, resources freed/taken, time passing."""
    jobs = draw(contexts(fast))
    steps = []
    for _ in range(draw(st.integers(1, 8))):
        steps.append(draw(st.one_of(
            st.tuples(st.just("put"), st.integers(0, 11)),
            st.tuples(st.just("discard"), st.integers(0, 11)),
            st.tuples(st.just("free"), clusters()),
            st.tuples(st.just("time"), st.sampled_from([0.0, 50.0, 400.0])),
        )))
    return jobs, steps


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=queue_histories(), free=clusters(), threshold=st.sampled_from([0.0, 100.0, 1e9]),
       aging=st.sampled_from([0.0, 600.0]))
def test_the_kept_queue_decides_like_a_pass_from_scratch(history, free, threshold, aging):
    """AdmissionQueue (order kept across passes, a pass skipped when nothing changed) answers at
    every step what the reference decides from scratch: a skipped pass (None) only where the
    reference's decision is the previous one again."""
    jobs, steps = history
    q = fast.AdmissionQueue(threshold, aging)
    queued: dict[str, object] = {}
    now, last = 500.0, None
    for j in jobs:
        q.put(j)
        queued[j.job_id] = j
    for op, arg in [("time", 0.0), *steps]:
        if op == "put" and arg < len(jobs):
            q.put(jobs[arg])
            queued[jobs[arg].job_id] = jobs[arg]
        elif op == "discard" and arg < len(jobs):
            q.discard(jobs[arg].job_id)
            queued.pop(jobs[arg].job_id, None)
        elif op == "free":
            free = arg
        elif op == "time":
            now += arg
        assert [j.job_id for j in q.ordered()] == [j.job_id for j in fast.queue_order(queued.values(), aging)]
        ref_jobs = tuple(ref.QueuedJob(j.job_id, j.priority, j.queued_at, j.bundles, j.strategy)
                         for j in queued.values())
        want = ref.decide_admission(ref.AdmissionContext(ref_jobs, free, threshold, aging), now)
        got = q.decide(free, now)
        if got is None:
            assert last is not None and (last.admit, last.reserved_for, last.waiting) == (
                want.admit, want.reserved_for, want.waiting)
        else:
            assert (got.admit, got.reserved_for, got.waiting) == (want.admit, want.reserved_for, want.waiting)
            last = got


def test_an_unchanged_queue_is_not_decided_again_until_a_reservation_is_due():
    free = {"a": {"CPU": 4.0, "GPU": 1.0}}
    q = fast.AdmissionQueue(starvation_threshold_s=100.0, aging_s=600.0)
    big = fast.QueuedJob("big", 90, 0.0, ({"CPU": 1.0, "GPU": 2.0},))
    small = fast.QueuedJob("small", 10, 5.0, ({"CPU": 1.0, "GPU": 1.0},))
    q.put(big)
    assert q.decide(free, 10.0).waiting == {"big": "waiting for capacity"}
    assert q.decide(free, 50.0) is None and q.skipped == 1  # same queue, same free: same answer
    assert q.decide({"a": {"CPU": 4.0, "GPU": 0.0}}, 50.0) is not None  # free changed
    q.put(small)
    assert q.decide(free, 60.0).admit == ["small"]  # backfill before the threshold
    assert q.decide(free, 61.0) is not None  # it admitted: decided again until the queue changes
    q.discard("small")
    assert q.decide(free, 62.0).reserved_for is None
    assert q.decide(free, 99.0) is None
    d = q.decide(free, 100.0)  # big reaches the starvation threshold: time alone changed the answer
    assert d is not None and d.reserved_for == "big"
    assert q.decide(free, 500.0) is None
    q.forget()  # the caller could not carry out the last decision: decide again
    assert q.decide(free, 501.0) is not None
    q.configure(starvation_threshold_s=1000.0, aging_s=600.0)
    assert q.decide(free, 502.0).reserved_for is None


def test_pack_tries_the_nodes_it_already_uses_in_node_order():
    """Found by the property test: a PACK gang of different bundles tries the nodes it already uses
    in node order (most free first), not in the order it started using them."""
    free = {"n1": {"CPU": 2.0, "GPU": 0.5, "memory": 4e9}, "n3": {"CPU": 4.0, "GPU": 0.5}}
    gang = ({"CPU": 0.5, "memory": 5e8}, {"CPU": 2.0}, {"CPU": 1.0})
    want = ref.place(gang, free, "PACK")
    assert want[0] == ["n1", "n3", "n3"] and placement.place(gang, free, "PACK") == want
