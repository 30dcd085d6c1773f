"""Sweeps: trials expanded from a spec, K per bundle, the results store (first result wins, best
trial), a bundle's runner without Ray (failures isolated, batched sends), and the Coordinator's loop
with a fake RayOps (assignment per bundle, finished trials left out after a recovery, the summary
as the result)."""

from __future__ import annotations

import math

import pytest

from raycluster.control.core import CoordinatorCore
from raycluster.errors import InvalidJobSpec
from raycluster.policy.recovery import RankStatus
from raycluster.rank.sweep import TrialContext, run_bundle
from raycluster.spec import parse_spec
from raycluster.store.lifecycle import Cause
from raycluster.store.trials import TrialStore
from tests.fakes import Clock, FakeOps
from jobs.toy import trial as toy_trial


def sweep_spec(trials, **kw):
    return {"name": "sweep", "entrypoint": "jobs.toy:trial", "trials": trials, **kw}


@pytest.mark.parametrize("trials,resources,count,k", [
    ({"grid": {"lr": [0.1, 0.2], "steps": [1, 2, 3]}}, {"gpus": 1}, 6, 1),
    ({"grid": {"lr": [0.1]}, "gpus_per_trial": 0.1}, {"gpus": 1}, 1, 10),
    ({"grid": {"lr": [0.1]}, "gpus_per_trial": 0.3}, {"gpus": 1}, 1, 3),
    ({"grid": {"lr": [0.1]}, "cpus_per_trial": 0.5}, {"cpus": 2}, 1, 4),
    ({"configs": [{"lr": 1}, {"lr": 2}], "per_bundle": 7}, {"cpus": 1}, 2, 7),
    ([{"lr": 1}, {"lr": 2}, {"lr": 3}], {"cpus": 1}, 3, 1),  # a bare list is a list of configs
])
def test_trials_expand_and_k(trials, resources, count, k):
    spec = parse_spec(sweep_spec(trials, resources=resources))
    assert spec.trials.count() == count == len(spec.trials.expand())
    assert spec.trials.per_bundle_for(spec.resources) == k


def test_grid_order_is_sorted_keys_cartesian():
    spec = parse_spec(sweep_spec({"grid": {"b": [1, 2], "a": ["x", "y"]}}))
    assert spec.trials.expand() == [{"a": "x", "b": 1}, {"a": "x", "b": 2}, {"a": "y", "b": 1}, {"a": "y", "b": 2}]


@pytest.mark.parametrize("trials,field", [
    ({"grid": {"lr": []}}, "trials.grid"),
    ({"grid": {}}, "trials.grid"),
    ({}, "trials"),
    ({"configs": [{}], "grid": {"a": [1]}}, "trials"),
    ([], "trials"),
    ({"grid": {"a": list(range(1000)), "b": list(range(1000))}}, "trials"),
    ({"grid": {"a": [1]}, "per_bundle": 0}, "trials.per_bundle"),
    ({"grid": {"a": [1]}, "gpus_per_trial": 2}, "trials.gpus_per_trial"),
    ({"grid": {"a": [1]}, "mode": "best"}, "trials.mode"),
    ({"grid": {"a": [1]}, "colour": 1}, "trials.colour"),
])
def test_bad_trials_name_the_field(trials, field):
    with pytest.raises(InvalidJobSpec) as exc:
        parse_spec(sweep_spec(trials))
    assert exc.value.field == field


def test_trial_store_first_result_wins_and_best(tmp_path):
    st = TrialStore(tmp_path / "jobs.db")
    rows = [{"trial": i, "ok": True, "config": {"lr": i}, "result": {"loss": (i - 3) ** 2}} for i in range(6)]
    rows.append({"trial": 6, "ok": False, "config": {"lr": 6}, "error": "Traceback: boom"})
    rows.append({"trial": 7, "ok": True, "config": {"lr": 7}, "result": {"loss": math.nan}})  # not a best
    assert st.record("j", 1, rows, now=1.0) == 8
    assert st.record("j", 2, [{"trial": 3, "ok": True, "config": {}, "result": {"loss": 99}}], now=2.0) == 0
    assert st.done("j") == set(range(8))
    three = st.list("j", limit=1, offset=3)[0]
    assert three["attempt"] == 1 and three["result"] == {"loss": 0}
    s = st.summary("j", total=10, metric="loss", mode="min")
    assert s == {"trials": 10, "succeeded": 7, "failed": 1, "unfinished": 2,
                 "best": {"trial": 3, "config": {"lr": 3}, "metric": "loss", "value": 0}}
    assert st.summary("j", 10, "loss", "max")["best"]["trial"] == 0  # (0-3)^2 = 9 = (6-3)^2 ... trial 0 first
    assert [r["trial"] for r in st.list("j", failed_only=True)] == [6]


def make_ctx(trial, config):
    return TrialContext(job_id="j", attempt=1, trial=trial, config=config, device_of=lambda: "cpu",
                        checkpoint_root=None, checkpoint_policy={})


@pytest.mark.parametrize("k", [1, 8])
def test_bundle_isolates_a_failing_trial(k):
    sent: list[list[dict]] = []
    trials = [[i, {"lr": 0.01 * (i % 50 + 1)}] for i in range(200)]
    counts = run_bundle(toy_trial, {"trials": trials, "per_bundle": k, "base_config": {"fail_trial": 17}},
                        make_ctx, sent.append)
    rows = [r for batch in sent for r in batch]
    assert counts == {"ran": 200, "succeeded": 199, "failed": 1, "per_bundle": k}
    assert sorted(r["trial"] for r in rows) == list(range(200))  # each once
    bad = [r for r in rows if not r["ok"]]
    assert len(bad) == 1 and bad[0]["trial"] == 17 and "deliberate failure of trial 17" in bad[0]["error"]
    good = next(r for r in rows if r["trial"] == 0)
    assert good["config"] == {"fail_trial": 17, "lr": 0.01} and "loss" in good["result"]
    assert len(sent) < 200  # batched, not a call per trial


def test_bundle_fails_when_results_cannot_be_recorded():
    def send(rows):
        raise ConnectionError("coordinator gone")

    with pytest.raises(ConnectionError):
        run_bundle(toy_trial, {"trials": [[0, {}]], "per_bundle": 1}, make_ctx, send)


def test_trial_checkpoint_round_trip(tmp_path):
    ctx = TrialContext(job_id="j", attempt=1, trial=4, config={}, device_of=lambda: "cpu",
                       checkpoint_root=str(tmp_path), checkpoint_policy={"every_steps": 5})
    assert ctx.restore() is None and ctx.should_checkpoint(10) and not ctx.should_checkpoint(7)
    ctx.save_checkpoint({"x": [1, 2]}, 10)
    again = TrialContext(job_id="j", attempt=2, trial=4, config={}, device_of=lambda: "cpu",
                         checkpoint_root=str(tmp_path), checkpoint_policy={})
    assert again.restore() == {"x": [1, 2]} and again.restored_step == 10


def test_loop_assigns_bundles_and_never_reruns_finished_trials(tmp_path):
    ops, clock = FakeOps(), Clock()
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    jid = core.submit(sweep_spec({"grid": {"lr": [0.01 * i for i in range(1, 11)]}, "metric": "loss"},
                                 num_workers=3, resources={"cpus": 1}, max_restarts=2))["id"]
    for _ in range(3):
        clock.t += 0.1
        core.reconcile_once()
    refs = core.attempts[jid].refs
    first = [ops.launches[r]["sweep"]["trials"] for r in refs]
    assert [[i for i, _c in t] for t in first] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    # bundle 0 records two trials, then a node is lost
    core.trials_done(jid, 1, [{"trial": 0, "ok": True, "config": {"lr": 0.01}, "result": {"loss": 5.0}},
                              {"trial": 3, "ok": True, "config": {"lr": 0.04}, "result": {"loss": 1.0}}])
    assert core.get(jid)["sweep"]["succeeded"] == 2
    ops.finish(refs, RankStatus.SYSTEM_ERROR, "node died", Cause.NODE_LOST)
    for _ in range(12):
        clock.t += 2.0
        core.reconcile_once()
    job = core.get(jid)
    assert job["attempt"] == 2 and job["state"] == "RUNNING", job["transitions"]
    again = [[i for i, _c in ops.launches[r]["sweep"]["trials"]] for r in core.attempts[jid].refs]
    assert again == [[6, 9], [1, 4, 7], [2, 5, 8]]  # finished trials are not run again
    core.trials_done(jid, 2, [{"trial": i, "ok": True, "config": {}, "result": {"loss": 2.0 + i}}
                              for i in (1, 2, 4, 5, 6, 7, 8, 9)])
    ops.finish(core.attempts[jid].refs)
    clock.t += 0.1
    core.reconcile_once()
    job = core.get(jid)
    assert job["state"] == "SUCCEEDED"
    assert job["result"] == {"trials": 10, "succeeded": 10, "failed": 0, "unfinished": 0,
                             "best": {"trial": 3, "config": {"lr": 0.04}, "metric": "loss", "value": 1.0}}
    page = core.list_trials(jid, limit=3)
    assert [t["trial"] for t in page["trials"]] == [0, 1, 2] and page["trials"][0]["attempt"] == 1
    with pytest.raises(InvalidJobSpec):
        core.list_trials(core.submit({"name": "x", "entrypoint": "jobs.toy:noop"})["id"])
