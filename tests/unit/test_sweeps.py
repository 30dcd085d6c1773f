"""Sweeps: trials expanded from a spec, K per bundle, the results store (first result wins, best
trial), a bundle's runner without Ray (failures isolated, batched sends), and the Coordinator's loop
with a fake RayOps (assignment per bundle, finished trials left out after a recovery, the summary
as the result)."""

from __future__ import annotations

import math

import pytest

from raycluster.control.core import CoordinatorCore
from raycluster.errors import InvalidJobSpec
from raycluster.policy.entrypoint import FOUND, UNKNOWN, read_entrypoint
from raycluster.policy.recovery import RankStatus
from raycluster.policy.sweeps import SweepView, bundles_to_start, claim_size, next_look_s
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


def handed(trials):
    """A bundle's ``claim`` that hands out ``trials`` in one share, then nothing."""
    shares = [trials]
    return lambda: shares.pop() if shares else []


@pytest.mark.parametrize("k", [1, 8])
def test_bundle_isolates_a_failing_trial(k):
    sent: list[list[dict]] = []
    trials = [[i, {"lr": 0.01 * (i % 50 + 1)}] for i in range(200)]
    counts = run_bundle(toy_trial, {"per_bundle": k, "base_config": {"fail_trial": 17}},
                        make_ctx, sent.append, handed(trials))
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
        run_bundle(toy_trial, {"per_bundle": 1}, make_ctx, send, handed([[0, {}]]))


def test_trial_checkpoint_round_trip(tmp_path):
    ctx = TrialContext(job_id="j", attempt=1, trial=4, config={}, device_of=lambda: "cpu",
                       checkpoint_root=str(tmp_path), checkpoint_policy={"every_steps": 5})
    assert ctx.restore() is None and ctx.should_checkpoint(10) and not ctx.should_checkpoint(7)
    ctx.save_checkpoint({"x": [1, 2]}, 10)
    again = TrialContext(job_id="j", attempt=2, trial=4, config={}, device_of=lambda: "cpu",
                         checkpoint_root=str(tmp_path), checkpoint_policy={})
    assert again.restore() == {"x": [1, 2]} and again.restored_step == 10


def _row(i, duration_s=None, loss=None):
    return {"trial": i, "ok": True, "config": {}, "result": {"loss": 2.0 + i if loss is None else loss},
            "duration_s": duration_s}


def test_loop_hands_out_trials_starts_bundles_in_stages_and_never_reruns_finished_trials(tmp_path):
    ops, clock = FakeOps(), Clock()
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    jid = core.submit(sweep_spec({"grid": {"lr": [0.01 * i for i in range(1, 11)]}, "metric": "loss"},
                                 num_workers=3, resources={"cpus": 1}, max_restarts=2))["id"]
    for _ in range(3):
        clock.t += 0.1
        core.reconcile_once()
    refs = core.attempts[jid].refs
    assert len(refs) == 1 and ops.launches[refs[0]]["sweep"]["pull"]  # one bundle first
    clock.t += 2.0  # its cold start
    assert [i for i, _c in core.sweeps.claim(jid, 1, 0)] == [0, 1]  # ceil(10 / (2 * 3))
    clock.t += 0.1
    core.reconcile_once()
    assert len(core.attempts[jid].refs) == 1  # how long trials take is not known yet
    # two trials of 5 s: the 8 left would keep it busy for 40 s > its 2 s start: the others start
    core.sweeps.done(jid, 1, [_row(0, 5.0, loss=5.0), _row(1, 5.0, loss=1.0)])
    assert core.get(jid)["sweep"]["succeeded"] == 2
    clock.t += 0.1
    core.reconcile_once()
    refs = core.attempts[jid].refs
    assert [ops.launches[r]["rank"] for r in refs] == [0, 1, 2]
    taken = [i for r in (1, 2, 0) for i, _c in core.sweeps.claim(jid, 1, r)]
    assert taken == [2, 3, 4, 5]  # a shrinking share each: 2, 1, 1
    # then a node is lost: trials 2..5 were taken but never recorded
    ops.finish(refs, RankStatus.SYSTEM_ERROR, "node died", Cause.NODE_LOST)
    for _ in range(12):
        clock.t += 2.0
        core.reconcile_once()
    job = core.get(jid)
    assert job["attempt"] == 2 and job["state"] == "RUNNING", job["transitions"]
    # earlier trials took 5 s each: 8 x 5 s is worth every bundle at once
    assert [ops.launches[r]["rank"] for r in core.attempts[jid].refs] == [0, 1, 2]
    assert core.sweeps.claim(jid, 1, 0) == []  # a bundle of the old attempt gets nothing
    again = []
    while got := core.sweeps.claim(jid, 2, len(again) % 3):
        again += [i for i, _c in got]
    assert sorted(again) == [2, 3, 4, 5, 6, 7, 8, 9]  # finished trials are not run again
    core.sweeps.done(jid, 2, [_row(i, 5.0) for i in again])
    ops.finish(core.attempts[jid].refs)
    clock.t += 0.1
    core.reconcile_once()
    job = core.get(jid)
    assert job["state"] == "SUCCEEDED"
    assert job["result"] == {"trials": 10, "succeeded": 10, "failed": 0, "unfinished": 0,
                             "best": {"trial": 1, "config": {}, "metric": "loss", "value": 1.0}}
    page = core.list_trials(jid, limit=3)
    assert [t["trial"] for t in page["trials"]] == [0, 1, 2] and page["trials"][0]["attempt"] == 1
    with pytest.raises(InvalidJobSpec):
        core.list_trials(core.submit({"name": "x", "entrypoint": "jobs.toy:noop"})["id"])


@pytest.mark.parametrize("v,now,want", [
    # the launch: one bundle, unless earlier attempts say the work left is longer than a start
    (SweepView(4, 0, 120, None, None, None), 0.0, 1),
    (SweepView(4, 0, 120, 0.003, None, None), 0.0, 1),       # 0.36 s of work < a 3 s start
    (SweepView(4, 0, 120, 0.1, None, None), 0.0, 4),         # 12 s of work > a 3 s start
    (SweepView(4, 0, 120, None, None, None, staged=False), 0.0, 4),
    # the first bundle is still starting: nothing is known yet
    (SweepView(4, 1, 120, None, None, None), 50.0, 0),
    # short trials: the first bundle finishes them sooner than another would start
    (SweepView(4, 1, 100, 0.003, 2.5, 10.0), 30.0, 0),
    # long trials: the rest start
    (SweepView(4, 1, 100, 0.5, 2.5, 10.0), 10.5, 3),
    (SweepView(4, 2, 100, 0.5, 2.5, 10.0), 10.5, 2),
    # no trial finished yet: once it has worked as long as it took to start (ski rental)
    (SweepView(4, 1, 100, None, 2.5, 10.0), 12.4, 0),
    (SweepView(4, 1, 100, None, 2.5, 10.0), 12.5, 3),
    # nothing left to hand out, or every bundle started
    (SweepView(4, 1, 0, 5.0, 2.5, 10.0), 99.0, 0),
    (SweepView(4, 4, 100, 5.0, 2.5, 10.0), 99.0, 0),
])
def test_bundles_to_start(v, now, want):
    assert bundles_to_start(v, now, assumed_start_s=3.0) == want


@pytest.mark.parametrize("unclaimed,bundles,k,want", [
    (120, 4, 1, 15), (7, 4, 1, 1), (1, 4, 1, 1), (0, 4, 1, 0), (120, 4, 20, 20), (10, 4, 20, 10), (1000, 1, 1, 500),
])
def test_claim_size_is_a_shrinking_share_never_below_k(unclaimed, bundles, k, want):
    assert claim_size(unclaimed, bundles, k) == want


@pytest.mark.parametrize("unclaimed,mean_s,want", [
    (875, None, 110),      # not timed yet: the shrinking share
    (875, 0.5, 110),       # long trials: the share is already more than 50 ms
    (875, 0.001, 110),     # 110 x 1 ms > 50 ms
    (875, 0.0001, 500),    # 0.1 ms each: at least 50 ms of them
    (875, 0.000002, 875),  # tiny: all of them in one request
])
def test_timed_tiny_trials_are_taken_at_least_min_share_s_at_a_time(unclaimed, mean_s, want):
    assert claim_size(unclaimed, 4, 1, mean_s, min_share_s=0.05) == want


def test_next_look_is_the_ski_rental_timer_only_while_durations_are_unknown():
    assert next_look_s(SweepView(4, 1, 100, None, 2.5, 10.0), 11.0, 3.0) == pytest.approx(1.5)
    assert next_look_s(SweepView(4, 1, 100, 0.5, 2.5, 10.0), 11.0, 3.0) is None  # events decide
    assert next_look_s(SweepView(4, 1, 100, None, None, None), 11.0, 3.0) is None  # not started yet
    assert next_look_s(SweepView(4, 4, 100, None, 2.5, 10.0), 11.0, 3.0) is None


def test_short_trials_keep_one_bundle_long_unknown_ones_start_the_rest(tmp_path):
    ops, clock = FakeOps(), Clock()
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    short = core.submit(sweep_spec([{"lr": i} for i in range(60)], num_workers=3, resources={"cpus": 0.5}))["id"]
    long = core.submit(sweep_spec([{"lr": i} for i in range(60)], num_workers=3, resources={"cpus": 0.5}))["id"]
    for _ in range(3):
        clock.t += 0.1
        core.reconcile_once()
    clock.t += 2.0
    core.sweeps.claim(short, 1, 0)
    core.sweeps.claim(long, 1, 0)
    core.sweeps.done(short, 1, [_row(0, 0.002)])
    for _ in range(10):
        clock.t += 0.5
        core.reconcile_once()
    assert len(core.attempts[short].refs) == 1  # 50 x 2 ms: one warm bundle is quicker than a start
    assert len(core.attempts[long].refs) == 3  # a trial still running after 2 s: the rest started
    assert 0.05 <= core.next_wait_s() <= 1.0


def placed_sweep(tmp_path, trials: int):
    """A loop with a fake Ray and a sweep of ``trials`` on 3 bundles, placed (its first bundle launched)."""
    ops, clock = FakeOps(), Clock()
    core = CoordinatorCore(tmp_path, ops, clock=clock)
    jid = core.submit(sweep_spec([{"lr": i} for i in range(trials)], num_workers=3, resources={"cpus": 0.5}))["id"]
    for _ in range(3):
        clock.t += 0.1
        core.reconcile_once()
    return ops, clock, core, jid


def test_bundles_started_late_with_nothing_left_are_stopped_not_waited_for(tmp_path):
    ops, clock, core, jid = placed_sweep(tmp_path, 30)
    clock.t += 0.05  # a warm worker: it asks 0.25 s after its launch
    taken = core.sweeps.claim(jid, 1, 0)
    clock.t += 0.3  # no trial recorded, none back for more after longer than its start: the rest start
    core.reconcile_once()
    att = core.attempts[jid]
    assert len(att.refs) == 3
    while got := core.sweeps.claim(jid, 1, 0):  # ... but the first bundle takes every trial meanwhile
        taken += got
    core.sweeps.done(jid, 1, [_row(i, 0.001) for i, _c in taken])
    clock.t += 0.1
    core.reconcile_once()
    assert ops.cancelled == att.refs[1:]  # stopped before they asked: nothing was left for them
    ops.finish(att.refs[:1])
    clock.t += 0.1
    core.reconcile_once()
    assert core.get(jid)["state"] == "SUCCEEDED" and core.get(jid)["result"]["succeeded"] == 30


def test_a_bundle_back_for_more_tells_how_long_trials_take(tmp_path):
    _ops, clock, core, jid = placed_sweep(tmp_path, 600)
    clock.t += 2.0
    assert len(core.sweeps.claim(jid, 1, 0)) == 100
    clock.t += 0.2  # 100 trials in 0.2 s: 500 left take 1 s < its 2 s start
    core.sweeps.claim(jid, 1, 0)
    for _ in range(5):
        clock.t += 1.0
        core.reconcile_once()
    assert len(core.attempts[jid].refs) == 1


@pytest.mark.parametrize("k", [1, 8])
def test_a_bundle_asks_for_trials_until_none_are_left(k):
    pending = [[i, {"lr": 0.01 * (i + 1)}] for i in range(50)]
    asked: list[int] = []

    def claim():
        got = pending[:7]
        del pending[:7]
        asked.append(len(got))
        return got

    sent: list[list[dict]] = []
    counts = run_bundle(toy_trial, {"pull": True, "per_bundle": k, "base_config": {}}, make_ctx, sent.append, claim)
    assert counts == {"ran": 50, "succeeded": 50, "failed": 0, "per_bundle": k}
    assert sorted(r["trial"] for batch in sent for r in batch) == list(range(50))
    assert asked == [7] * 7 + [1, 0]  # asked again only once its share was taken


def _zip(files: dict[str, str]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


@pytest.mark.parametrize("entrypoint,files,want", [
    ("m:train", {"m.py": "import torch\n\ndef train(ctx):\n    pass\n"}, FOUND),
    ("pkg.sub:train", {"pkg/__init__.py": "", "pkg/sub.py": "async def train(ctx): ...\n"}, FOUND),
    ("pkg:train", {"pkg/__init__.py": "from .impl import train\n"}, FOUND),
    ("m:train", {"m.py": "try:\n    import x\nexcept ImportError:\n    def train(ctx): ...\n"}, FOUND),
    ("m:train", {"m.py": "train = make()\n"}, FOUND),
    ("m:train", {"m.py": "from impl import *\n"}, UNKNOWN),        # only an import can tell
    ("m:train", {"m.py": "def other(ctx): ...\n"}, UNKNOWN),       # the import check names what is missing
    ("other:train", {"m.py": "def train(ctx): ...\n"}, UNKNOWN),   # not in the package: maybe installed
    ("m:train", {"m.py": "def train(ctx)\n    pass\n"}, "SyntaxError"),
])
def test_an_entrypoint_is_read_from_the_job_package_when_it_is_there(entrypoint, files, want):
    got = read_entrypoint(entrypoint, [b"not a zip", _zip(files)])
    if want == "SyntaxError":
        assert got.startswith("cannot import module 'm': SyntaxError") and "m.py, line 1" in got
    else:
        assert got == want
