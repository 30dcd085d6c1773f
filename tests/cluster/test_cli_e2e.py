"""End to end through the README's own commands: `raycluster up/submit/jobs/status/cancel/down`
and `raycluster demo`, as subprocesses against their own local cluster."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from raycluster.util.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.cluster]


def _env(state_dir):
    # (a faster control loop than the default 1 s: only `up`/`demo` start it, and these tests wait on
    # many job transitions in a row; the default interval has its own end-to-end test, test_ray_up)
    env = {**os.environ, "RAYCLUSTER_STATE_DIR": str(state_dir), "RAYCLUSTER_RECONCILE_INTERVAL_S": "0.2"}
    env.pop("RAY_ADDRESS", None)
    return env


def rc(state_dir, *args, timeout=300, check_code=None):
    env = _env(state_dir)
    proc = subprocess.run([sys.executable, "-m", "raycluster.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check_code is not None:
        assert proc.returncode == check_code, (args, proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def _ray_drivers(state_dir) -> int:
    """Ray jobs of type DRIVER, as the dashboard's Jobs page lists them (its state API)."""
    import urllib.request

    rec = json.loads((Path(state_dir) / "local-cluster" / "cluster.json").read_text())
    req = urllib.request.Request(f"{rec['dashboard_url']}/api/v0/jobs?limit=10000")
    if rec.get("auth_mode") == "token":
        req.add_header("Authorization", f"Bearer {Path(rec['auth_token_path']).read_text().strip()}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        jobs = json.loads(resp.read())["data"]["result"]["result"]
    return sum(1 for j in jobs if str(j.get("type")).endswith("DRIVER"))


def recorded_pids(state_dir):
    rec = json.loads((Path(state_dir) / "local-cluster" / "cluster.json").read_text())
    return [n["pid"] for n in rec["nodes"]]


@pytest.mark.timeout(400)
def test_cli_lifecycle(tmp_path):
    state = tmp_path / "s"
    spec = tmp_path / "job.yaml"
    spec.write_text("name: cli-job\nentrypoint: jobs.toy:counter\nnum_workers: 2\nresources: {cpus: 0.5}\n"
                    "checkpoint: {every_steps: 5}\nconfig: {steps: 20}\n")
    long = tmp_path / "long.yaml"
    long.write_text("name: long\nentrypoint: jobs.toy:counter\n"
                    "config: {steps: 100000, sleep_per_step_s: 0.1, print_every: 1}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nentrypoint: jobs.toy:counter\npriority: -3\n")
    try:
        api_port = free_port("127.0.0.1")
        up = rc(state, "--json", "up", "--local", "--workers", "2", "--api-port", str(api_port), check_code=0)
        pids = recorded_pids(state)
        info = json.loads(up.stdout[up.stdout.index("{"):])
        assert info["address"].startswith("127.0.0.1:") and info["api_url"].endswith(f":{api_port}")
        assert (state / "api_token").stat().st_mode & 0o777 == 0o600

        drivers_before = _ray_drivers(state)
        done = rc(state, "submit", str(spec), "--wait", check_code=0)
        assert "SUCCEEDED" in done.stdout
        # the documented example, a field changed on the command line; --wait shows rank 0's output
        ex = rc(state, "submit", "configs/jobs/example.yaml", "--wait", "--set", "config.steps=120",
                "--set", "resources.cpus=0.5", check_code=0)
        assert "==> attempt 1 rank 0 <==" in ex.stdout and "step 120 loss" in ex.stdout, ex.stdout[-2000:]
        assert "step 140 loss" not in ex.stdout and "rank 1/2" not in ex.stdout  # steps=120; rank 0's only
        assert "did you mean 'config.steps'" not in ex.stderr
        jobs = json.loads(rc(state, "--json", "jobs", "--oldest-first", check_code=0).stdout)
        assert [j["state"] for j in jobs] == ["SUCCEEDED"] * 2 and jobs[0]["result"]["steps"] == 20
        assert abs(jobs[1]["result"]["w"] - 3) < 0.05
        jid = jobs[0]["id"]
        detail = json.loads(rc(state, "--json", "status", jid, check_code=0).stdout)
        assert [t["to"] for t in detail["transitions"]][-1] == "SUCCEEDED"
        assert "nodes 3" in rc(state, "status", check_code=0).stdout
        # over the recorded HTTP API: no Ray driver per CLI call (the dashboard's Jobs page keeps the real jobs)
        assert _ray_drivers(state) == drivers_before
        logs = rc(state, "logs", jid, "--tail", "5", check_code=0).stdout
        assert "==> attempt 1 rank 0 <==" in logs and "==> attempt 1 rank 1 <==" in logs
        assert "not found" in rc(state, "logs", "job-000000000000", check_code=4).stderr

        err = rc(state, "submit", str(bad), check_code=2)
        assert "priority" in err.stderr and "Traceback" not in err.stderr
        assert "not found" in rc(state, "status", "job-000000000000", check_code=4).stderr
        assert "already SUCCEEDED" in rc(state, "cancel", jid, check_code=5).stderr

        # the same queue over HTTP, through the Serve API, with the token from the state dir
        over_http = json.loads(rc(state, "--address", info["api_url"], "--json", "jobs", "--oldest-first",
                                  check_code=0).stdout)
        assert [j["id"] for j in over_http] == [j["id"] for j in jobs]
        # `up` again: idempotent (same API, same URL); on a port another program holds: exit 2, and
        # the running cluster and API are untouched
        again = rc(state, "--json", "up", "--local", "--api-port", str(api_port), check_code=0)
        assert json.loads(again.stdout[again.stdout.index("{"):])["api_url"] == info["api_url"]
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            taken = rc(state, "up", "--local", "--api-port", str(squatter.getsockname()[1]), check_code=2)
        assert "another program is listening" in taken.stderr and "Traceback" not in taken.stderr
        assert recorded_pids(state) == pids
        assert rc(state, "--address", info["api_url"], "--json", "jobs", check_code=0).returncode == 0

        lid = rc(state, "submit", str(long), check_code=0).stdout.strip()
        # logs -f: the lines as the rank prints them, until the job ends (here: cancelled)
        follow = subprocess.Popen([sys.executable, "-m", "raycluster.cli", "logs", "-f", lid], cwd=ROOT,
                                  env=_env(state), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            seen = [follow.stdout.readline() for _ in range(3)]
            assert seen[0].strip() == "==> attempt 1 rank 0 <==" and seen[1].startswith("counter rank 0 step "), seen
            assert int(seen[2].split()[4]) == int(seen[1].split()[4]) + 1  # each line once, in order
            assert rc(state, "cancel", lid, check_code=0).stdout.split() == [lid, "CANCELLED"]
            out, err = follow.communicate(timeout=60)
        finally:
            follow.kill()
        assert follow.returncode == 0 and f"({lid} CANCELLED" in err, err[-2000:]
        assert len(json.loads(rc(state, "--json", "jobs", check_code=0).stdout)) == 3  # the bad spec added nothing
        # pages: newest first, a hint to the next page, and every job with --all
        page1 = rc(state, "jobs", "--limit", "1", check_code=0)
        assert lid in page1.stdout and jid not in page1.stdout and "--offset 1" in page1.stderr
        page3 = rc(state, "jobs", "--limit", "1", "--offset", "2", check_code=0)
        assert jid in page3.stdout and lid not in page3.stdout and "--offset" not in page3.stderr
        oldest = rc(state, "jobs", "--limit", "1", "--oldest-first", check_code=0)
        assert jid in oldest.stdout and lid not in oldest.stdout
        assert len(json.loads(rc(state, "--json", "jobs", "--all", check_code=0).stdout)) == 3
        assert "--limit must be" in rc(state, "jobs", "--limit", "0", check_code=2).stderr

        # your code from here: a local working_dir goes up as a package, once
        proj = tmp_path / "proj"
        proj.mkdir()
        (proj / "only_here_cli.py").write_text("def train(ctx):\n    return {'from': 'here'}\n")
        local = tmp_path / "local.yaml"
        local.write_text(f"name: local-code\nentrypoint: only_here_cli:train\nruntime_env: {{working_dir: {proj}}}\n")
        first = rc(state, "submit", str(local), "--wait", check_code=0)
        assert "SUCCEEDED" in first.stdout and "uploaded gcs://_ray_pkg_" in first.stderr, first.stderr[-2000:]
        second = rc(state, "submit", str(local), "--wait", check_code=0)
        assert "SUCCEEDED" in second.stdout and "uploaded" not in second.stderr  # unchanged: not sent again
        typo = tmp_path / "typo.yaml"  # refused before its directory is packaged or uploaded
        (proj / "changed.py").write_text("x = 1\n")
        typo.write_text(f"name: t\nentrypoint: only_here_cli:train\nnum_worker: 2\nruntime_env: {{working_dir: {proj}}}\n")
        err = rc(state, "submit", str(typo), check_code=2)
        assert "did you mean 'num_workers'" in err.stderr and "uploaded" not in err.stderr
        badenv = tmp_path / "badenv.yaml"
        badenv.write_text("name: b\nentrypoint: jobs.toy:counter\nruntime_env: {env_vars: {A: 1}}\n")
        err = rc(state, "submit", str(badenv), check_code=2)
        assert "runtime_env.env_vars" in err.stderr and "Traceback" not in err.stderr
    finally:
        rc(state, "down", timeout=120)
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert "no local cluster" in rc(state, "down", check_code=0).stdout  # idempotent
    # the history outlives the cluster: read from the state on disk, saying so
    hist = rc(state, "--json", "jobs", check_code=0)
    assert jid in hist.stdout and "state on disk" in hist.stderr
    assert "==> attempt 1 rank 0 <==" in rc(state, "logs", jid, "--tail", "5", check_code=0).stdout


@pytest.mark.timeout(200)
def test_cli_without_cluster_says_how_to_start_one(tmp_path):
    proc = rc(tmp_path / "empty", "jobs", check_code=3)
    assert "raycluster up --local" in proc.stderr


@pytest.mark.timeout(600)
def test_demo_runs_three_jobs_to_success(tmp_path):
    state = tmp_path / "demo"
    proc = rc(state, "demo", timeout=560)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    lines = proc.stdout.splitlines()
    for name in ("cnn-classifier", "transformer-classifier", "lstm-forecaster"):
        assert any(name in ln and "SUCCEEDED" in ln for ln in lines), name

    def first(name, state):
        return next(i for i, ln in enumerate(lines) if name in ln and f" {state} " in f"{ln} ")
    # priority at work on a cluster too small for all three: the CNN (80) runs first, the LSTM (20,
    # submitted first) waits and says why
    assert first("cnn-classifier", "RUNNING") < first("lstm-forecaster", "RUNNING")
    assert "waiting: " in lines[first("lstm-forecaster", "PENDING")]
    assert proc.stdout.count("checkpoints kept at steps [") == 3
    assert "local cluster stopped" in proc.stdout
