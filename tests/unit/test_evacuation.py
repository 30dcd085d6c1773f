"""The one checkpoint-then-move protocol: the pure step (``policy.evacuation``) as a table, the
mechanism (``control/evacuation.Evacuations``) through its interface on a real SQLite job table with a
fake checkpoint view, and a Coordinator restarted mid-move (fake Ray) ending the move the way it was
going — once, not as a restart."""

from __future__ import annotations

import pytest

from raycluster import constants as C
from raycluster.control.core import CoordinatorCore
from raycluster.control.evacuation import Evacuations
from raycluster.policy.evacuation import HOLD_GRACE_S, Move, MoveKind, Verdict, decide_move, move_step
from raycluster.policy.steps import Action
from raycluster.store.jobs import JobStore
from raycluster.store.lifecycle import Cause, JobState
from tests.fakes import Clock, FakeOps

R = JobState.RUNNING


def mv(kind=MoveKind.RECOVER, before=3, wait_s=10.0, since=100.0, cause=Cause.NODE_UNHEALTHY, attempt=1):
    return Move("j", attempt, cause, "why", since, before, wait_s, kind)


@pytest.mark.parametrize("case,move,state,attempt,newest,now,expect", [
    ("no newer checkpoint yet", mv(), R, 1, 3, 105.0, Verdict.WAIT),
    ("a newer checkpoint: move", mv(), R, 1, 4, 101.0, Verdict.MOVE),
    ("none before, one now: move", mv(before=None), R, 1, 0, 101.0, Verdict.MOVE),
    ("none at all, within the wait", mv(before=None), R, 1, None, 105.0, Verdict.WAIT),
    ("waited long enough: move anyway", mv(), R, 1, 3, 110.0, Verdict.MOVE),
    ("the job ended", mv(), JobState.SUCCEEDED, 1, 4, 101.0, Verdict.DROP),
    ("the job is gone from the view", mv(), None, None, None, 101.0, Verdict.DROP),
    ("a later attempt runs", mv(), R, 2, 4, 101.0, Verdict.DROP),
    ("a hold waits for its asker even when checkpointed", mv(kind=MoveKind.HOLD), R, 1, 9, 101.0, Verdict.WAIT),
    ("a hold nobody ended is dropped", mv(kind=MoveKind.HOLD), R, 1, 3, 110.0 + HOLD_GRACE_S, Verdict.DROP),
    ("a requeue move waits like a recover", mv(kind=MoveKind.REQUEUE, cause=Cause.PREEMPTED), R, 1, 3, 105.0,
     Verdict.WAIT),
])
def test_decide_move_table(case, move, state, attempt, newest, now, expect):
    assert decide_move(move, state, attempt, newest, now) == expect, case


class _Job:
    def __init__(self, preempted=0):
        self.id, self.state, self.attempt, self.preempted = "j", R, 1, preempted


@pytest.mark.parametrize("kind,cause,action,dst,text", [
    (MoveKind.REQUEUE, Cause.PREEMPTED, Action.PREEMPT, JobState.PENDING, "at step 4"),
    (MoveKind.RECOVER, Cause.NODE_DRAINED, Action.RECOVER, JobState.RECOVERING, "at step 4"),
    (MoveKind.HOLD, Cause.BUDGET, Action.RECOVER, JobState.RECOVERING, "at step 4"),
])
def test_move_step_per_kind(kind, cause, action, dst, text):
    step = move_step(_Job(preempted=2), mv(kind=kind, cause=cause), 4)
    assert (step.action, step.dst, step.cause) == (action, dst, cause) and text in step.reason
    assert step.fields.get("preempted") == (3 if kind == MoveKind.REQUEUE else None)
    late = move_step(_Job(), mv(kind=kind, cause=cause), 3)  # no newer checkpoint came
    assert ("no newer checkpoint within 10 s" in late.reason) == (kind != MoveKind.HOLD)


def test_move_round_trips_through_its_row():
    m = Move("j", 2, Cause.PREEMPTED, "for hi", 5.0, None, 60.0, MoveKind.REQUEUE, "hi")
    assert Move.from_row(m.to_row()) == m


# ---------------------------------------------------------------------------------------------- the mechanism
@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "EVACUATE_CHECK_INTERVAL_S", 0.0)
    store = JobStore(tmp_path / "jobs.db")
    rec = store.insert(name="j", spec={}, priority=0, tenant=None)
    for src, dst, cause in ((JobState.PENDING, JobState.PLACING, Cause.ADMITTED),
                            (JobState.PLACING, JobState.RUNNING, Cause.PLACED)):
        rec = store.transition(rec.id, src, dst, cause=cause, attempt=1)
    steps = {"n": 3}
    applied = []

    def apply(rec, step, now):
        applied.append(step)
        return store.transition(rec.id, step.src, step.dst, cause=step.cause, reason=step.reason, now=now,
                                **step.fields)

    def make():
        return Evacuations(store, newest_step=lambda _j: steps["n"], job=lambda jid: store.get(jid),
                           apply=apply, clock=lambda: 0.0)

    return store, rec, steps, applied, make


def test_ask_persists_asks_once_and_moves_after_a_newer_checkpoint(env):
    store, rec, steps, applied, make = env
    ev = make()
    move = ev.ask(rec, Cause.NODE_DRAINED, "moved off n1", 30.0, MoveKind.RECOVER, 100.0)
    assert move.before_step == 3 and store.get(rec.id).moving["cause"] == "node_drained"
    assert ev.ask(rec, Cause.PREEMPTED, "other", 5.0, MoveKind.REQUEUE, 101.0) == move  # one move at a time
    assert ev.checkpoint_wanted(rec.id, 1) and not ev.checkpoint_wanted(rec.id, 1)  # yes once
    ev.tick(105.0)
    assert not applied and ev.pending({rec.id: [1, 3]}) == [rec.id]
    steps["n"] = 4
    assert ev.pending({rec.id: [1, 3]}) == []
    ev.tick(106.0)
    job = store.get(rec.id)
    assert job.state == JobState.RECOVERING and job.cause == Cause.NODE_DRAINED and job.moving is None
    assert "moved off n1; resumes from its checkpoint at step 4" == job.reason and not ev


def test_a_move_whose_gang_left_is_dropped_and_a_cancel_clears_the_row(env):
    store, rec, _steps, applied, make = env
    ev = make()
    ev.ask(rec, Cause.NODE_UNHEALTHY, "moved off n1", 30.0, MoveKind.RECOVER, 100.0)
    ev.cancel(rec.id, frozenset({Cause.PREEMPTED}))  # not its cause: kept
    assert rec.id in ev.moves
    ev.cancel(rec.id, frozenset({Cause.NODE_UNHEALTHY}))
    assert not ev and store.get(rec.id).moving is None and not ev.checkpoint_wanted(rec.id, 1)
    ev.ask(rec, Cause.NODE_UNHEALTHY, "again", 30.0, MoveKind.RECOVER, 100.0)
    store.transition(rec.id, R, JobState.SUCCEEDED, cause=Cause.FINISHED)  # it finished by itself
    assert store.get(rec.id).moving is None  # any transition ends the move on the row
    ev.tick(101.0)
    assert not ev and not applied


def test_a_hold_is_ended_by_its_asker_or_dropped_after_its_grace(env):
    store, rec, _steps, applied, make = env
    ev = make()
    ev.ask(rec, Cause.BUDGET, "over budget", 30.0, MoveKind.HOLD, 100.0)
    ev.tick(120.0)
    assert not applied  # a hold never ends by itself
    ev.tick(100.0 + 30.0 + HOLD_GRACE_S)
    assert not ev and store.get(rec.id).moving is None and store.get(rec.id).state == R
    ev.ask(rec, Cause.BUDGET, "over budget", 30.0, MoveKind.HOLD, 300.0)
    out = ev.move_now(store.get(rec.id), Cause.BUDGET, "over budget; its node r1 is given back", 301.0)
    assert out.state == JobState.RECOVERING and out.cause == Cause.BUDGET and "r1 is given back" in out.reason


def test_a_new_mechanism_reads_the_moves_on_the_rows(env):
    store, rec, _steps, _applied, make = env
    make().ask(rec, Cause.PREEMPTED, "for hi", 60.0, MoveKind.REQUEUE, 100.0)
    again = make()  # a Coordinator started again
    step = again.after_restart(store.get(rec.id))
    assert (step.action, step.dst, step.cause) == (Action.PREEMPT, JobState.PENDING, Cause.PREEMPTED)
    assert "the Coordinator restarted while it was being moved" in step.reason and not again


# ---------------------------------------------------------------------------------------------- the loop
def test_a_coordinator_restarted_mid_preemption_ends_it_once(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "PREEMPT_AFTER_S", 2.0)
    monkeypatch.setattr(C, "PREEMPT_CHECK_INTERVAL_S", 0.0)
    monkeypatch.setattr(C, "PREEMPT_CHECKPOINT_WAIT_S", 60.0)
    ops, clock = FakeOps(nodes=1), Clock()
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    spec = {"entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 1}}
    lo = core.submit({**spec, "name": "lo", "priority": 1})["id"]
    for _ in range(5):
        clock.t += 0.5
        core.reconcile_once()
    hi = core.submit({**spec, "name": "hi", "priority": 9})["id"]
    for _ in range(10):
        clock.t += 0.5
        core.reconcile_once()
    assert set(core.preemption.in_flight) == {lo} and core.get(lo)["moving"]["for_job"] == hi
    # the Coordinator dies while lo is asked to checkpoint; a new one starts (lo's ranks died with it)
    again = CoordinatorCore(tmp_path, FakeOps(nodes=1), clock=clock)
    for _ in range(6):
        clock.t += 0.5
        again.reconcile_once()
    job = again.get(lo)
    causes = [t["cause"] for t in job["transitions"]]
    assert causes.count("preempted") == 1 and "coordinator_restart" not in causes
    assert job["preempted"] == 1 and job["system_restarts"] == 0 and job["moving"] is None
    assert again.get(hi)["state"] in ("PLACING", "RUNNING")  # the room went to the job it was made for
