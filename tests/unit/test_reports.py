"""The ranks' reports reach last_metrics in step order: the Coordinator's actor threads deliver one
rank's reports out of order (a job held at step 20 showed 19), within a flush and across two."""

import pytest

from raycluster.control.reports import Reports
from raycluster.store.jobs import JobStore
from tests.unit.test_state import _new


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "jobs.db")


def test_out_of_order_reports_in_one_flush_end_at_the_newest_step(store):
    j = _new(store)
    reports = Reports(store, clock=lambda: 1.0)
    for step in (18, 20, 19):
        reports.report(j.id, 1, step, {"total": float(step)})
    reports.flush()
    assert store.get(j.id).last_metrics == {"total": 20.0, "step": 20}
    assert sorted(h["step"] for h in store.metrics_history(j.id)) == [18, 19, 20]  # the history keeps all


def test_a_late_older_report_does_not_take_last_metrics_back_but_a_new_attempt_does(store):
    j = _new(store)
    reports = Reports(store, clock=lambda: 1.0)
    reports.report(j.id, 1, 20, {"total": 20.0})
    reports.flush()
    reports.report(j.id, 1, 19, {"total": 19.0})  # delivered after 20 was written
    reports.flush()
    assert store.get(j.id).last_metrics == {"total": 20.0, "step": 20}
    assert len(store.metrics_history(j.id)) == 2
    reports.report(j.id, 2, 11, {"total": 11.0})  # attempt 2 resumes from its checkpoint at step 10
    reports.flush()
    assert store.get(j.id).last_metrics == {"total": 11.0, "step": 11}
