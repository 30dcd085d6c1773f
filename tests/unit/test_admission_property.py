"""The fast admission pass (policy/admission.py: FreeView) decides exactly what the straightforward
reference (tests/unit/admission_reference.py, the policy as it was) decides, on random queues and
clusters: same admitted jobs in the same order, same reservation, same waiting reasons, and for a
single gang the same nodes and the same remaining free resources."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raycluster.policy import admission as fast
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
    assert fast.place(gang, free, strategy) == ref.place(gang, free, strategy)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(free=clusters(), jobs=contexts(ref), threshold=st.sampled_from([0.0, 100.0, 1e9]),
       aging=st.sampled_from([0.0, 512.0, 600.0]), now=st.sampled_from([0.0, 500.0, 1000.0, 2000.0]))
def test_decide_admission_matches_the_reference(free, jobs, threshold, aging, now):
    want = ref.decide_admission(ref.AdmissionContext(tuple(jobs), free, threshold, aging), now)
    fast_jobs = tuple(fast.QueuedJob(j.job_id, j.priority, j.queued_at, j.bundles, j.strategy) for j in jobs)
    got = fast.decide_admission(fast.AdmissionContext(fast_jobs, free, threshold, aging), now)
    assert (got.admit, got.reserved_for, got.waiting) == (want.admit, want.reserved_for, want.waiting)


@settings(max_examples=200, deadline=None)
@given(free=clusters(), gang=gangs(), strategy=st.sampled_from(STRATEGIES))
def test_infeasible_reason_matches_the_reference(free, gang, strategy):
    assert fast.infeasible_reason(list(gang), strategy, free) == ref.infeasible_reason(list(gang), strategy, free)


def test_the_input_is_never_modified():
    free = {"a": {"CPU": 2.0, "GPU": 1.0}, "b": {"CPU": 2.0, "GPU": 1.0}}
    jobs = tuple(fast.QueuedJob(f"j{i}", 50, float(i), ({"CPU": 1.0, "GPU": 1.0},), "PACK") for i in range(3))
    d = fast.decide_admission(fast.AdmissionContext(jobs, free, 300.0, 600.0), 10.0)
    assert d.admit == ["j0", "j1"] and free == {"a": {"CPU": 2.0, "GPU": 1.0}, "b": {"CPU": 2.0, "GPU": 1.0}}
