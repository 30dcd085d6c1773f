"""Integration: teams sharing one real local cluster (head + 3 workers of 2 CPUs and 1 logical GPU).

Covers: fair share (a team flooding the queue does not keep a later team out), a tenant quota
holding a job back with its reason while GPUs are free, a per-job limit refused at submit, and
preemption end to end (the lowest-priority preemptible job checkpoints, is queued again, the
high-priority job runs, the victim resumes and finishes with the weights of an undisturbed run;
``preemptible: false`` is never chosen).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raycluster.errors import InvalidJobSpec
from tests.conftest import runtime_on_shared, settings_for_tests, wait_for

pytestmark = [pytest.mark.cluster]
ROOT = Path(__file__).resolve().parents[2]

# (for speed: fair share, preemption and its checkpoint ask within seconds, not minutes)
SHARING = {"FAIRSHARE_INTERVAL_S": 0.5, "PREEMPT_AFTER_S": 4, "PREEMPT_CHECK_INTERVAL_S": 0.5,
           "CHECKPOINT_ASK_INTERVAL_S": 0.5}


@pytest.fixture(scope="module")
def cluster(shared_cluster, tmp_path_factory):
    state_dir = Path(tmp_path_factory.mktemp("rc-sharing"))
    (state_dir / "tenants.yaml").write_text(
        "tenants:\n  team-q:\n    max_gpus: 1\n    per_job: {max_workers: 1}\n")
    with runtime_on_shared(shared_cluster, state_dir, settings_for_tests(**SHARING)) as coord:
        yield {"lc": shared_cluster, "state_dir": state_dir, "coord": coord}


@pytest.fixture
def client(cluster):
    from raycluster.client.ray_client import Client

    return Client(cluster["coord"])


def counter(name, tenant=None, steps=20, sleep=0.15, gpus=0.5, **extra):
    return {"name": name, "entrypoint": "jobs.toy:counter", "tenant": tenant,
            "config": {"steps": steps, "sleep_per_step_s": sleep},
            "resources": {"cpus": 0.5, "gpus": gpus}, "checkpoint": {"every_steps": 5}, **extra}


def started_at(job) -> float:
    return max(t["ts"] for t in job["transitions"] if t["to"] == "RUNNING")


@pytest.mark.timeout(240)
def test_a_flooding_team_does_not_keep_a_later_team_out(client):
    flood = client.submit_many([counter(f"a{i}", "team-a") for i in range(20)])
    flood_ids = [j["id"] for j in flood]
    wait_for(lambda: sum(client.get(j)["state"] == "RUNNING" for j in flood_ids) >= 4, 60, "team-a running")
    wait_for(lambda: next(t for t in client.tenants()["tenants"] if t["tenant"] == "team-a")["usage"] > 2, 30,
             "team-a's usage to grow")
    late = [client.submit(counter(f"b{i}", "team-b"))["id"] for i in range(2)]
    final = client.wait(flood_ids + late, timeout_s=200)
    assert all(j["state"] == "SUCCEEDED" for j in final), [(j["name"], j["state"], j["error"]) for j in final]
    b_started = max(started_at(j) for j in final[20:])
    after = sum(started_at(j) > b_started for j in final[:20])
    # FIFO would start team-b after all 20; fair share puts it ahead of most of team-a's backlog
    assert after >= 8, f"only {after} of team-a's jobs started after team-b's"
    view = {t["tenant"]: t for t in client.tenants()["tenants"]}
    assert view["team-a"]["usage"] > view["team-b"]["usage"] > 0
    assert view["team-b"]["fair_share"] > view["team-a"]["fair_share"]


@pytest.mark.timeout(180)
def test_tenant_quota_holds_a_job_with_its_reason_and_per_job_limit_at_submit(cluster, client):
    first = client.submit(counter("q1", "team-q", steps=40, gpus=1))["id"]
    wait_for(lambda: client.get(first)["state"] == "RUNNING", 60, "q1 running")
    second = client.submit(counter("q2", "team-q", steps=5, gpus=1))["id"]
    reason = wait_for(lambda: client.get(second)["waiting"], 30, "q2's waiting reason")
    assert reason == "tenant quota team-q 1/1 GPU"
    assert client.cluster_status()["gpus_free"] >= 1  # held back by its quota, not by capacity
    assert client.get(second)["state"] == "PENDING"
    cli = subprocess.run([sys.executable, "-m", "raycluster.cli", "--state-dir", str(cluster["state_dir"]), "tenants"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr[-2000:]
    row = next(line.split() for line in cli.stdout.splitlines() if line.startswith("team-q"))
    assert row[1] == "1/1" and row[4] == "1", cli.stdout  # GPUs held/quota, queued
    before = len(client.list(tenant="team-q"))
    with pytest.raises(InvalidJobSpec) as exc:
        client.submit(counter("q3", "team-q", num_workers=2))
    assert exc.value.field == "num_workers" and "team-q" in exc.value.message
    assert len(client.list(tenant="team-q")) == before  # nothing created
    final = client.wait([first, second], timeout_s=120)
    assert [j["state"] for j in final] == ["SUCCEEDED"] * 2
    assert started_at(final[1]) >= max(t["ts"] for t in final[0]["transitions"] if t["to"] == "SUCCEEDED") - 0.5


CNN = {"entrypoint": "jobs.cnn:train", "resources": {"gpus": 0.5, "cpus": 0.5},
       "config": {"steps": 120, "batch_size": 16, "sleep_per_step_s": 0.1, "report_every": 5},
       "checkpoint": {"every_steps": 20, "keep_last": 3}}


@pytest.mark.timeout(300)
def test_preemption_checkpoints_requeues_and_resumes_with_identical_result(client, reference, tmp_path):
    # six half-GPU slots: a job of priority above the urgent job's (never a candidate; it holds its slot
    # until the end — one that finished before the preemption completed would hand the urgent job its
    # slot, the victim would rightly be spared and this test see no preemption), one job that opted out
    # (the lowest priority), the victim, and three of higher priority than it (240 steps, not 120: the
    # six may take a while to be placed on a busy box)
    go = tmp_path / "go"
    cnn = {**CNN, "config": {**CNN["config"], "steps": 240}}
    held = counter("high", steps=4, priority=95)
    held["config"].update(hold_at_step=2, hold_until_file=str(go))
    high = client.submit(held)["id"]
    keep = client.submit(counter("keep", steps=2000, sleep=0.05, priority=5, preemptible=False))["id"]
    others = [client.submit(counter(f"other{i}", steps=2000, sleep=0.05, priority=20 + i))["id"] for i in range(3)]
    try:
        # the victim comes last, once the others run: one of them left waiting (a slot still held by an
        # earlier test's gang on a busy box) would rightly preempt it first, for itself (seen once)
        wait_for(lambda: all(client.get(j)["state"] == "RUNNING" for j in [high, keep, *others]), 90,
                 "five running")
        victim = client.submit({**cnn, "name": "cnn-victim", "priority": 10})["id"]
        wait_for(lambda: client.get(victim)["state"] == "RUNNING", 90, "the victim running")
        wait_for(lambda: any(c["state"] == "COMPLETE" for c in client.checkpoints(victim)), 90, "a victim checkpoint")
        urgent = client.submit(counter("urgent", steps=10, sleep=0.1, priority=90))["id"]
        done = client.wait([urgent], timeout_s=120)[0]
        assert done["state"] == "SUCCEEDED", done["error"]
        undisturbed = reference.start(cnn["entrypoint"], cnn["config"])  # (tests/reference.py: computed meanwhile)
        final = client.wait([victim], timeout_s=180)[0]
    finally:
        go.touch()
    assert final["state"] == "SUCCEEDED", final["error"]
    pre = [t for t in final["transitions"] if t["cause"] == "preempted"]
    assert len(pre) == 1 and pre[0]["from"] == "RUNNING" and pre[0]["to"] == "PENDING" and urgent in pre[0]["reason"], \
        (final["transitions"], done["transitions"])
    assert "resumes from its checkpoint at step" in pre[0]["reason"]
    assert final["preempted"] == 1 and final["system_restarts"] == 0 and final["attempt"] == 2
    # it ran again only after the urgent job had started
    assert started_at(final) > started_at(done)
    base = undisturbed.result(timeout=300)
    assert final["result"]["weights_sha256"] == base["weights_sha256"]
    for key in ("final_loss", "final_accuracy", "steps"):
        assert final["result"][key] == base[key], key
    assert client.wait([high], timeout_s=60)[0]["state"] == "SUCCEEDED"
    for jid in (high, keep, *others):  # the opted-out and the higher-priority jobs were never preempted
        job = client.get(jid)
        assert job["preempted"] == 0 and job["attempt"] == 1, job["transitions"]
        if jid != high:
            client.cancel(jid)


def cli(cluster, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "raycluster.cli", "--state-dir", str(cluster["state_dir"]), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(180)
def test_a_schedule_from_the_cli_runs_on_its_ticks_and_pauses(cluster, client, tmp_path):
    import json
    import time

    spec = tmp_path / "cron.yaml"
    spec.write_text("name: every-3s\nentrypoint: jobs.toy:counter\nschedule: '* * * * * */3'\n"
                    "config: {steps: 3}\nresources: {cpus: 0.5}\n")
    made = cli(cluster, "--json", "submit", str(spec))
    assert made.returncode == 0, made.stderr[-2000:]
    sid = json.loads(made.stdout)["id"]
    wait_for(lambda: sum(r["state"] == "SUCCEEDED" for r in client.get_schedule(sid)["run_jobs"]) >= 2, 60,
             "two runs of the schedule")
    got = client.get_schedule(sid)
    for run in got["run_jobs"]:
        assert run["submitted_at"] % 3 < 1.0, got["run_jobs"]  # submitted at its ticks (every 3 s), on time
    assert cli(cluster, "schedules", "pause", sid).returncode == 0
    n = len(client.get_schedule(sid)["run_jobs"])
    time.sleep(4)  # at least one tick (every 3 s) while paused
    assert len(client.get_schedule(sid)["run_jobs"]) == n  # paused: no new run
    listed = cli(cluster, "schedules")
    assert sid in listed.stdout and "paused" in listed.stdout
    assert cli(cluster, "schedules", "delete", sid).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nentrypoint: jobs.toy:counter\nschedule: 'every night'\n")
    out = cli(cluster, "submit", str(bad))
    assert out.returncode == 2 and "schedule" in out.stderr and "cron" in out.stderr
    assert [s["id"] for s in client.list_schedules()] == []


def sweep(name, trials, **kw):
    return {"name": name, "entrypoint": "jobs.toy:trial", "trials": trials, "resources": {"cpus": 0.5}, **kw}


@pytest.mark.timeout(180)
def test_a_sweep_of_200_trials_isolates_the_failing_one(cluster, client):
    job = client.submit(sweep("sweep-200", {"grid": {"lr": [0.001 * i for i in range(1, 201)]}, "per_bundle": 4,
                                            "metric": "loss"}, num_workers=2, config={"fail_trial": 17}))
    final = client.wait([job["id"]], timeout_s=150)[0]
    assert final["state"] == "SUCCEEDED", final["error"]
    summary = final["result"]
    assert (summary["trials"], summary["succeeded"], summary["failed"], summary["unfinished"]) == (200, 199, 1, 0)
    assert summary["best"]["trial"] == 199 and summary["best"]["config"]["lr"] == pytest.approx(0.2)
    page = client.trials(job["id"], failed_only=True)
    assert [t["trial"] for t in page["trials"]] == [17] and "deliberate failure of trial 17" in page["trials"][0]["error"]
    assert len(client.trials(job["id"])["trials"]) == 200
    shown = cli(cluster, "status", job["id"])
    assert "sweep: 200 trials: 199 succeeded, 1 failed" in shown.stdout and "best trial: #199" in shown.stdout


@pytest.mark.timeout(240)
def test_a_node_killed_mid_sweep_reruns_no_finished_trial(cluster, client, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    lc = cluster["lc"]
    spec = sweep("sweep-kill", {"grid": {"lr": [0.01 * i for i in range(1, 61)]}}, num_workers=3,
                 placement_strategy="STRICT_SPREAD", config={"sleep_s": 0.3, "marker_dir": str(markers)},
                 max_restarts=3)
    jid = client.submit(spec)["id"]
    wait_for(lambda: client.get(jid).get("sweep", {}).get("succeeded", 0) >= 15, 90, "15 finished trials")
    pg = next(i for i in __import__("ray").util.placement_group_table().values() if i.get("name") == f"rc-{jid}-a1")
    victim = next(n for n in lc.nodes() if n.ray_node_id == pg["bundles_to_node_id"][0])
    lc.kill_node(victim.name)
    wait_for(lambda: client.get(jid)["attempt"] >= 2, 90, "the sweep to be placed again")
    lc.add_worker()
    final = client.wait([jid], timeout_s=150)[0]
    assert final["state"] == "SUCCEEDED", final["error"]
    assert final["result"]["succeeded"] == 60 and final["system_restarts"] == 1
    trials = client.trials(jid)["trials"]
    runs: dict[int, list[str]] = {}
    for m in markers.iterdir():
        runs.setdefault(int(m.name[1:7]), []).append(m.name.split("-")[1])
    first = [t["trial"] for t in trials if t["attempt"] == 1]
    assert len(first) >= 15
    for t in first:  # finished (recorded) in attempt 1: never run again
        assert runs[t] == ["a1"], (t, runs[t])
    assert sorted(runs) == list(range(60))
