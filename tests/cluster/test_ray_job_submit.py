"""`ray job submit` as a way in, through the REAL `ray job submit` CLI against a token-auth local
cluster: the submitting Ray job's working_dir reaches the training tasks, the Ray job's status
follows the raycluster job's, invalid specs fail the Ray job with a clear message. Plus rank logs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.conftest import AUX_WORKERS, runtime_on_shared, settings_for_tests

pytestmark = [pytest.mark.cluster]

MYTRAIN = '''
import time


def train(ctx):
    """Only exists in the uploaded working_dir."""
    total = 0
    for step in range(1, ctx.config.get("steps", 5) + 1):
        total += step
        print(f"mytrain rank {ctx.rank} step {step}")
        ctx.report(step=step, loss=1.0 / step)
        time.sleep(ctx.config.get("sleep", 0.2))
    return {"total": total, "rank": ctx.rank, "from": __file__.rsplit("/", 1)[-1]}


def boom(ctx):
    raise RuntimeError("mytrain exploded on purpose")
'''


@pytest.fixture(scope="module")
def rc(aux_cluster, tmp_path_factory):
    """The aux cluster (head with no CPUs + 2 workers of 2 CPUs, token auth, nodes started with
    TEST_ENV and PIN_ENV: tests/conftest.py), the runtime on it with TEST_SETTINGS."""
    from raycluster.client.ray_client import Client

    state_dir = Path(tmp_path_factory.mktemp("rj-state"))
    lc = aux_cluster.lc
    with runtime_on_shared(lc, state_dir, settings_for_tests(), workers=AUX_WORKERS) as coord:
        yield {"lc": lc, "state_dir": state_dir, "client": Client(coord)}


def _ray_cli() -> list[str]:
    ray_bin = Path(sys.executable).parent / "ray"
    return [str(ray_bin)] if ray_bin.exists() else [sys.executable, "-m", "ray.scripts.scripts"]


def ray_job_submit(lc, working_dir: Path, spec: str, *extra: str, follow: bool = True, timeout: float = 150):
    """`ray job submit --working-dir DIR -- python -m raycluster.submit SPEC --follow` as a user runs it."""
    sid, popen = start_ray_job_submit(lc, working_dir, spec, *extra, follow=follow)
    return sid, finished(popen, timeout)


def finished(popen: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    try:
        out, err = popen.communicate(timeout=timeout)
    finally:
        popen.kill()
    return subprocess.CompletedProcess(popen.args, popen.returncode, out, err)


def start_ray_job_submit(lc, working_dir: Path, spec: str, *extra: str, follow: bool = True):
    """The same, started (its ``subprocess.Popen``): several run side by side."""
    sid = f"rj-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, **lc.driver_env()}  # RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH: the CLI sends the token
    env.pop("RAY_ADDRESS", None)
    argv = [*_ray_cli(), "job", "submit", "--address", lc.dashboard_url, "--submission-id", sid,
            "--working-dir", str(working_dir), "--",
            sys.executable, "-m", "raycluster.submit", spec, *(["--follow"] if follow else []), "--poll", "0.2",
            *extra]
    return sid, subprocess.Popen(argv, cwd=working_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)


def job_client(lc):
    from ray.job_submission import JobSubmissionClient

    token = lc.auth_token_path.read_text().strip()
    return JobSubmissionClient(lc.dashboard_url, headers={"Authorization": f"Bearer {token}"})


def rc_job_named(client, name):
    jobs = [j for j in client.list() if j["name"] == name]
    assert len(jobs) == 1, [j["name"] for j in client.list()]
    return jobs[0]


@pytest.mark.timeout(180)
def test_entrypoint_only_in_working_dir_runs_and_ray_job_succeeds(rc, tmp_path):
    (tmp_path / "mytrain.py").write_text(MYTRAIN)
    (tmp_path / "spec.yaml").write_text(textwrap.dedent("""\
        name: from-ray-job
        entrypoint: mytrain:train
        num_workers: 2
        resources: {cpus: 0.5}
        config: {steps: 5, sleep: 0.3}
        runtime_env: {env_vars: {FROM_SPEC: "1"}}
    """))
    sid, proc = ray_job_submit(rc["lc"], tmp_path, "spec.yaml")
    assert proc.returncode == 0, (proc.stdout[-4000:], proc.stderr[-3000:])
    from ray.job_submission import JobStatus

    jc = job_client(rc["lc"])
    assert jc.get_job_status(sid) == JobStatus.SUCCEEDED
    job = rc_job_named(rc["client"], "from-ray-job")
    assert job["state"] == "SUCCEEDED", job["error"]
    assert job["result"] == {"total": 15, "rank": 0, "from": "mytrain.py"}
    env = job["spec"]["runtime_env"]
    assert env["working_dir"].startswith("gcs://") and env["env_vars"]["FROM_SPEC"] == "1"
    logs = jc.get_job_logs(sid)
    assert job["id"] in logs and f"{job['id']} RUNNING" in logs and f"{job['id']} SUCCEEDED" in logs
    assert "step=5 loss=0.2" in logs, logs[-3000:]
    # the rank logs hold the user's prints, per rank
    by_rank = {e["rank"]: e["lines"] for e in rc["client"].logs(job["id"])}
    assert "mytrain rank 1 step 5" in by_rank[1] and "mytrain rank 0 step 1" in by_rank[0]


@pytest.mark.timeout(150)
def test_failing_train_fails_the_ray_job(rc, tmp_path):
    (tmp_path / "mytrain.py").write_text(MYTRAIN)
    (tmp_path / "boom.yaml").write_text("name: boom-from-ray-job\nentrypoint: mytrain:boom\nresources: {cpus: 0.5}\n")
    sid, proc = ray_job_submit(rc["lc"], tmp_path, "boom.yaml")
    assert proc.returncode != 0, proc.stdout[-3000:]
    from ray.job_submission import JobStatus

    jc = job_client(rc["lc"])
    assert jc.get_job_status(sid) == JobStatus.FAILED
    job = rc_job_named(rc["client"], "boom-from-ray-job")
    assert job["state"] == "FAILED" and "mytrain exploded on purpose" in job["error"]
    logs = jc.get_job_logs(sid)
    assert f"{job['id']} FAILED" in logs and "mytrain exploded on purpose" in logs


@pytest.mark.timeout(60)
def test_ray_job_cli_needs_the_token_env_that_raycluster_env_prints(rc, capsys):
    import json

    from raycluster import cli

    lc = rc["lc"]
    assert cli.main(["--state-dir", str(rc["state_dir"]), "--json", "env"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported == {"RAY_API_SERVER_ADDRESS": lc.dashboard_url, **lc.driver_env()}
    assert exported["RAY_AUTH_MODE"] == "token"
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    refused = subprocess.run([*_ray_cli(), "job", "list", "--address", lc.dashboard_url], env=bare,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "token authentication is enabled" in refused.stderr, refused.stderr[-2000:]
    ok = subprocess.run([*_ray_cli(), "job", "list"], env={**bare, **exported}, capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, (ok.stdout[-2000:], ok.stderr[-2000:])


@pytest.mark.timeout(150)
def test_invalid_spec_fails_the_ray_job_and_queues_nothing(rc, tmp_path):
    (tmp_path / "mytrain.py").write_text(MYTRAIN)
    (tmp_path / "bad.yaml").write_text("name: bad\nentrypoint: mytrain:train\npriority: 5000\n")
    (tmp_path / "missing.yaml").write_text("name: missing\nentrypoint: mytrain:nope\n")
    before = len(rc["client"].list())
    from ray.job_submission import JobStatus

    jc = job_client(rc["lc"])
    started = [(start_ray_job_submit(rc["lc"], tmp_path, spec), field)  # (side by side)
               for spec, field in (("bad.yaml", "priority"), ("missing.yaml", "entrypoint"))]
    for (sid, popen), field in started:
        proc = finished(popen, 150)
        assert proc.returncode != 0, proc.stdout[-3000:]
        assert jc.get_job_status(sid) == JobStatus.FAILED
        logs = jc.get_job_logs(sid)
        errors = [ln for ln in logs.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and field in errors[0], logs[-3000:]
        assert "Traceback" not in logs
        info = jc.get_job_info(sid)
        assert "exit code 2" in (info.message or ""), info.message
    assert "has no attribute 'nope'" in logs  # the Coordinator checked the uploaded working_dir
    assert len(rc["client"].list()) == before


@pytest.mark.timeout(150)
def test_queued_job_outlives_the_ray_job_that_uploaded_its_working_dir(rc, tmp_path):
    """Without --follow the Ray job ends at once; the job waits behind a blocker for longer than Ray
    keeps an unreferenced package, then still finds its working_dir (the Coordinator pins it)."""
    import time

    import ray
    from ray._private.runtime_env.packaging import package_exists

    from tests.conftest import wait_for

    client = rc["client"]
    blocker = client.submit({"name": "blocker", "entrypoint": "jobs.toy:counter", "num_workers": 2,
                             "placement_strategy": "STRICT_SPREAD", "resources": {"cpus": 2},
                             "config": {"steps": 100000, "sleep_per_step_s": 0.1}})["id"]
    wait_for(lambda: client.get(blocker)["state"] == "RUNNING", 60, "the blocker to run")
    (tmp_path / "mytrain.py").write_text(MYTRAIN)
    (tmp_path / "late.yaml").write_text("name: late\nentrypoint: mytrain:train\nresources: {cpus: 1}\n"
                                        "config: {steps: 3, sleep: 0}\n")
    sid, proc = ray_job_submit(rc["lc"], tmp_path, "late.yaml", follow=False)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    job = rc_job_named(client, "late")
    assert job["state"] == "PENDING" and job["id"] in job_client(rc["lc"]).get_job_logs(sid)
    uri = job["spec"]["runtime_env"]["working_dir"]
    time.sleep(8)  # > RAY_RUNTIME_ENV_TEMPORARY_REFERENCE_EXPIRATION_S after the Ray job ended
    assert ray.is_initialized() and package_exists(uri), f"{uri} was garbage-collected"
    client.cancel(blocker)
    final = client.wait([job["id"]], timeout_s=60)[0]
    assert final["state"] == "SUCCEEDED", final["error"]
    assert final["result"]["total"] == 6


@pytest.mark.timeout(90)
def test_rank_logs_of_a_two_worker_job(rc):
    client = rc["client"]
    job = client.wait([client.submit({"name": "chatty", "entrypoint": "jobs.toy:chatty", "num_workers": 2,
                                      "resources": {"cpus": 0.5}, "config": {"lines": 4}})["id"]], timeout_s=60)[0]
    assert job["state"] == "SUCCEEDED", job["error"]
    logs = client.logs(job["id"])
    assert [(e["attempt"], e["rank"]) for e in logs] == [(1, 0), (1, 1)]
    for e in logs:
        r = e["rank"]
        assert [f"chatty rank {r} attempt 1 line {i}" for i in range(4)] == \
            [ln for ln in e["lines"] if ln.startswith(f"chatty rank {r} attempt")]
        assert f"chatty rank {r} to stderr" in e["lines"] and f"chatty rank {r} logged" in e["lines"]
    assert [e["lines"] for e in client.logs(job["id"], tail_lines=1)] == [["chatty rank 0 logged"],
                                                                          ["chatty rank 1 logged"]]
    from raycluster.errors import JobNotFound

    with pytest.raises(JobNotFound):
        client.logs("job-doesnotexist")
