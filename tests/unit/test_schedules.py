"""Schedules and deadlines: the pure tick policy (parametrized), spec errors, and the Coordinator's
loop driven by an injectable clock and a fake RayOps (no cluster): runs on time, Forbid / Allow /
Replace, pause / resume, a restart, deadlines."""

from __future__ import annotations

import pytest

from raycluster.control.core import CoordinatorCore
from raycluster.errors import InvalidJobSpec, JobNotFound
from raycluster.policy.schedules import ScheduleView, TickAction, decide_tick, next_tick
from raycluster.policy.steps import JobView, deadline_step
from raycluster.spec import parse_spec
from raycluster.store.lifecycle import JobState
from tests.fakes import Clock, FakeOps


@pytest.mark.parametrize("cron,after,expect", [
    ("0 2 * * *", 0.0, 7200.0),  # 02:00 UTC
    ("0 2 * * *", 7200.0, 7200.0 + 86400),  # strictly after
    ("*/15 * * * *", 60.0, 900.0),
    ("* * * * * */10", 1001.0, 1010.0),  # 6 fields: seconds last
])
def test_next_tick(cron, after, expect):
    assert next_tick(cron, after) == expect


@pytest.mark.parametrize("policy,paused,due,running,expect", [
    ("Forbid", False, False, False, TickAction.WAIT),
    ("Forbid", True, True, False, TickAction.WAIT),
    ("Forbid", False, True, False, TickAction.RUN),
    ("Forbid", False, True, True, TickAction.SKIP),
    ("Allow", False, True, True, TickAction.RUN),
    ("Replace", False, True, True, TickAction.REPLACE),
    ("Replace", False, True, False, TickAction.RUN),
])
def test_tick_table(policy, paused, due, running, expect):
    s = ScheduleView("s", "* * * * * */10", policy, paused, next_run_at=1000.0)
    d = decide_tick(s, running, "job-prev", now=1000.0 if due else 995.0)
    assert d.action == expect
    if expect != TickAction.WAIT:
        assert d.next_run_at == 1010.0  # missed ticks are not made up: the first after now
    if expect in (TickAction.SKIP, TickAction.REPLACE):
        assert "job-prev" in d.reason


@pytest.mark.parametrize("data,field,fragment", [
    ({"schedule": "every night"}, "schedule", "is not a cron expression"),
    ({"schedule": "61 * * * *"}, "schedule", "is not a cron expression"),
    ({"schedule": "* * *"}, "schedule", "is not a cron expression"),
    ({"schedule": "0 2 * * *", "concurrency_policy": "Sometimes"}, "concurrency_policy", "Forbid"),
    ({"deadline": "next tuesday"}, "deadline", "ISO 8601"),
    ({"deadline": -5}, "deadline", "greater than 0"),
    ({"schedule": "0 2 * * *", "deadline": 2e9}, "deadline", "max_runtime_s"),
])
def test_bad_schedule_fields_name_the_field(data, field, fragment):
    with pytest.raises(InvalidJobSpec) as exc:
        parse_spec({"name": "x", "entrypoint": "jobs.toy:noop", **data})
    assert exc.value.field == field and fragment in exc.value.message


def test_deadline_parses_iso_and_epoch():
    assert parse_spec({"name": "x", "entrypoint": "a.b:c", "deadline": "1970-01-01T01:00:00Z"}).deadline == 3600.0
    assert parse_spec({"name": "x", "entrypoint": "a.b:c", "deadline": "1970-01-01T02:00:00+01:00"}).deadline == 3600.0
    assert parse_spec({"name": "x", "entrypoint": "a.b:c", "deadline": 3600}).deadline == 3600.0


@pytest.mark.parametrize("state,now,expected,fails", [
    (JobState.PENDING, 100.0, None, False),
    (JobState.PENDING, 200.0, None, True),  # passed
    (JobState.PENDING, 150.0, 60.0, True),  # cannot finish in time any more
    (JobState.PENDING, 150.0, 40.0, False),
    (JobState.RUNNING, 150.0, 60.0, False),  # already running: it may still make it
    (JobState.RUNNING, 200.0, None, True),
    (JobState.RECOVERING, 201.0, None, True),
    (JobState.SUCCEEDED, 500.0, None, False),
])
def test_deadline_table(state, now, expected, fails):
    step = deadline_step(JobView("j", state), 200.0, expected, now)
    assert (step is not None) == fails
    if fails:
        assert step.dst == JobState.FAILED and step.cause.value == "deadline" and "1970-01-01T00:03:20Z" in step.reason


# ---------------------------------------------------------------------------------------------- the loop
@pytest.fixture
def env(tmp_path):
    ops, clock = FakeOps(), Clock()
    return CoordinatorCore(tmp_path, ops, clock=clock), ops, clock


def sched(policy="Forbid", **kw):
    return {"name": "nightly", "entrypoint": "jobs.toy:noop", "resources": {"gpus": 0, "cpus": 0.5},
            "schedule": "* * * * * */10", "concurrency_policy": policy, **kw}


def run_until(core, clock, t, dt=0.5):
    while clock.t < t:
        clock.t = min(t, clock.t + dt)
        core.reconcile_once()


def runs(core, sid):
    return core.schedules.get(sid)["run_jobs"]


def test_schedule_runs_on_time_and_forbid_skips_an_overlap(env):
    core, ops, clock = env
    s = core.schedules.create(sched("Forbid"))
    assert s["next_run_at"] == 1010.0 and s["spec"].get("schedule") is None
    run_until(core, clock, 1009.5)
    assert runs(core, s["id"]) == []
    run_until(core, clock, 1010.5)
    first = runs(core, s["id"])
    assert len(first) == 1 and 1010.0 <= first[0]["submitted_at"] <= 1010.5  # on time
    assert core.get(first[0]["id"])["schedule_id"] == s["id"]
    run_until(core, clock, 1020.5)  # the first run is still RUNNING (the fake never finishes it)
    got = core.schedules.get(s["id"])
    assert len(got["run_jobs"]) == 1 and got["skipped"] == 1 and got["next_run_at"] == 1030.0
    ops.finish(core.attempts[first[0]["id"]].refs)
    run_until(core, clock, 1030.5)
    assert [r["state"] for r in runs(core, s["id"])][0] == "SUCCEEDED" and len(runs(core, s["id"])) == 2


def test_allow_overlaps_and_replace_cancels(env):
    core, ops, clock = env
    allow = core.schedules.create(sched("Allow", name="allow"))["id"]
    replace = core.schedules.create(sched("Replace", name="replace"))["id"]
    run_until(core, clock, 1020.5)
    a, r = runs(core, allow), runs(core, replace)
    assert len(a) == 2 and {core.get(j["id"])["state"] for j in a} <= {"PLACING", "RUNNING"}
    assert len(r) == 2 and core.get(r[0]["id"])["state"] == "CANCELLED"
    assert core.get(r[1]["id"])["state"] in ("PLACING", "RUNNING")


def test_pause_stops_runs_resume_starts_after_now_and_restart_keeps_schedules(env):
    core, ops, clock = env
    sid = core.schedules.create(sched(resources={"gpus": 0, "cpus": 0.1}))["id"]
    core.schedules.pause(sid)
    run_until(core, clock, 1045.0)
    assert runs(core, sid) == [] and core.schedules.get(sid)["paused"]
    core.schedules.resume(sid)
    assert core.schedules.get(sid)["next_run_at"] == 1050.0  # missed ticks are not made up
    run_until(core, clock, 1050.5)
    assert len(runs(core, sid)) == 1
    # a new Coordinator (restart) finds the schedule and goes on
    again = CoordinatorCore(core.state_dir, FakeOps(), clock=clock)
    ops.finish(core.attempts[runs(core, sid)[0]["id"]].refs)
    core.reconcile_once()
    run_until(again, clock, 1060.5)
    assert len(runs(again, sid)) == 2
    # the same tick again (a stale Coordinator): one run per tick, never two
    rec = again.schedules.store.get(sid)
    job = again.schedules.submit_run(rec.model_copy(update={"next_run_at": 1060.0}), clock.t)
    assert job.id == runs(again, sid)[-1]["id"] and len(runs(again, sid)) == 2
    again.schedules.delete(sid)
    with pytest.raises(JobNotFound):
        again.schedules.get(sid)
    assert again.schedules.list() == []


def test_a_spec_with_a_schedule_is_not_a_job(env):
    core, _ops, _clock = env
    with pytest.raises(InvalidJobSpec) as exc:
        core.submit(sched())
    assert exc.value.field == "schedule" and "/schedules" in exc.value.message
    with pytest.raises(InvalidJobSpec) as exc:
        core.schedules.create({"name": "x", "entrypoint": "jobs.toy:noop"})
    assert exc.value.field == "schedule"
    assert core.list() == [] and core.schedules.list() == []


def test_deadlines_in_the_loop(env):
    core, ops, clock = env
    ops.total = {"n0": {"CPU": 2.0, "GPU": 1.0}}
    job = {"entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 1}}
    hog = core.submit({**job, "name": "hog", "deadline": 1060.0})["id"]
    clock.t += 0.01
    queued = core.submit({**job, "name": "queued", "deadline": 1100.0, "expected_runtime_s": 60})["id"]
    run_until(core, clock, 1002.0)
    assert core.get(hog)["state"] == "RUNNING" and core.get(queued)["state"] == "PENDING"
    run_until(core, clock, 1041.0)  # 1041 + 60 > 1100: queued can no longer finish in time
    q = core.get(queued)
    assert q["state"] == "FAILED" and q["cause"] == "deadline" and "expected_runtime_s 60" in q["error"]
    assert 1040.0 <= q["finished_at"] <= 1041.0 and core.get(hog)["state"] == "RUNNING"
    run_until(core, clock, 1061.0)
    h = core.get(hog)
    assert h["state"] == "FAILED" and h["cause"] == "deadline" and "passed while RUNNING" in h["reason"]
    assert ops.pgs[f"rc-{hog}-a1"].removed


def test_a_schedules_packages_stay_pinned_while_it_exists(env, monkeypatch):
    from raycluster import constants as C

    core, ops, clock = env
    uri = "gcs://_ray_pkg_0123456789abcdef.zip"
    sid = core.schedules.create(sched(runtime_env={"working_dir": uri}))["id"]
    assert ops.pinned and uri in ops.pinned[-1][0]  # at once
    core.schedules.pause(sid)  # (no runs: a paused schedule's packages are kept too, it may resume)
    ops.pinned.clear()
    clock.t += C.PACKAGE_PIN_S  # long after: still renewed, though no run is unfinished
    core.reconcile_once()
    assert any(uri in uris for uris, _s in ops.pinned)
    core.schedules.delete(sid)
    ops.pinned.clear()
    clock.t += C.PACKAGE_PIN_S
    core.reconcile_once()
    assert not any(uri in uris for uris, _s in ops.pinned)


def test_a_retried_create_makes_one_schedule(env):
    from raycluster.errors import IdempotencyKeyReused

    core, _ops, _clock = env
    a = core.schedules.create(sched(), "key-1")
    b = core.schedules.create(sched(), "key-1")
    assert a["id"] == b["id"] and len(core.schedules.list()) == 1
    with pytest.raises(IdempotencyKeyReused) as exc:
        core.schedules.create(sched(name="other"), "key-1")
    assert exc.value.field == "idempotency_key" and len(core.schedules.list()) == 1


def test_a_job_that_cannot_finish_by_its_deadline_never_starts_on_a_free_gpu(env):
    """Issue 20: admission ran before the deadline pass, so such a job was placed and run until killed."""
    core, ops, clock = env
    job = {"entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 1}}
    late = core.submit({**job, "name": "late", "deadline": clock.t + 30, "expected_runtime_s": 60})["id"]
    clock.t += 0.1
    core.reconcile_once()
    j = core.get(late)
    assert j["state"] == "FAILED" and j["cause"] == "deadline" and j["attempt"] == 0
    assert not any(name.startswith(f"rc-{late}") for name in ops.pgs)  # never placed
