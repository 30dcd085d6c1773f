"""``ray up ray-cluster.yaml`` / ``ray down ray-cluster.yaml`` end to end, the way a Ray user runs
them (the repo's own config; only the state dir, the autoscaler tick, the idle timeout and the API port
changed, HOME and TMPDIR a sandbox): the head comes up with the runtime; a job needing a GPU the head
lacks makes the cluster rent a node from the local market and SUCCEEDS; ``ray up`` again changes
nothing; ``ray down`` gives back every rental and leaves no process of ours. A config with a bad key
is refused by ``ray up`` naming the key, with nothing started or rented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _config(tmp: Path, **changes) -> Path:
    cfg = yaml.safe_load((ROOT / "ray-cluster.yaml").read_text())  # (its state dir: RAYCLUSTER_STATE_DIR, below)
    cfg["provider"]["update_interval_s"] = 1
    cfg["idle_timeout_minutes"] = 0.1
    cfg["head_start_ray_commands"] = [c + " --api-port 0" for c in cfg["head_start_ray_commands"]]
    for key, value in changes.items():
        cfg["provider"]["markets"]["local"][key] = value
    path = tmp / "cluster.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ray(tmp: Path, *args, timeout=300):
    (tmp / "home").mkdir(exist_ok=True)
    # (a home, temp and state dir of the test's own: locations, not knobs; the settings it changes are
    # in the module's docstring)
    env = {**os.environ, "HOME": str(tmp / "home"), "TMPDIR": str(tmp), "RAYCLUSTER_STATE_DIR": str(tmp / "state")}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([RAY, *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)


def _cli(tmp: Path, *args, timeout=200):
    return subprocess.run([sys.executable, "-m", "raycluster.cli", "--state-dir", str(tmp / "state"), *args],
                          capture_output=True, text=True, timeout=timeout)


def _our_pids(tmp: Path) -> list[int]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(tmp) in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


@pytest.mark.timeout(420)
def test_ray_up_rents_for_a_gpu_job_is_idempotent_and_ray_down_leaves_nothing(tmp_path):
    cfg = _config(tmp_path)
    try:
        up = _ray(tmp_path, "up", str(cfg), "-y", "--no-config-cache")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        # ray up ends with what raycluster up prints: the dashboard, its token, the state dir, what next
        assert "Ray dashboard  http://127.0.0.1:" in up.stdout and f"state dir      {tmp_path / 'state'}" in up.stdout
        assert "raycluster submit" in up.stdout and "ray down ray-cluster.yaml" in up.stdout
        assert "will not launch any workers" not in up.stdout + up.stderr
        record = json.loads((tmp_path / "state" / "local-cluster" / "cluster.json").read_text())
        head_pid = next(n["pid"] for n in record["nodes"] if n["role"] == "head")
        if record["auth_mode"] == "token":  # (the default) the dashboard's token file is named
            assert f"sign in with the token in {record['auth_token_path']}" in up.stdout
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump({"name": "gpu-counter", "entrypoint": "jobs.toy:counter",
                                       "resources": {"gpus": 1, "cpus": 1},
                                       "config": {"steps": 5, "sleep_per_step_s": 0.2}}))
        sub = _cli(tmp_path, "submit", str(job), "--wait", "--timeout", "180")
        assert sub.returncode == 0, sub.stdout[-2000:] + sub.stderr[-2000:]
        nodes = json.loads(_cli(tmp_path, "--json", "nodes", "--all").stdout)
        rented = [n for n in nodes if n["market"] == "local"]
        assert rented and all(n["gpu_type"] == "T4" and n["usd_per_hour"] > 0 for n in rented)
        again = _ray(tmp_path, "up", str(cfg), "-y", "--no-config-cache")
        assert again.returncode == 0, again.stderr[-2000:]
        assert psutil.pid_exists(head_pid)  # the same head: nothing restarted
        assert "already running" in (tmp_path / "state" / "local-cluster" / "provider" / "logs").joinpath(
            next(p.name for p in (tmp_path / "state" / "local-cluster" / "provider" / "logs").iterdir())).read_text()
    finally:
        down = _ray(tmp_path, "down", str(cfg), "-y")
    assert down.returncode == 0, down.stderr[-2000:]
    wait_for(lambda: not _our_pids(tmp_path), 60, "every process of the cluster to exit")
    nodes = json.loads(_cli(tmp_path, "--json", "nodes", "--all").stdout)
    assert nodes and all(n["state"] == "released" for n in nodes), nodes
    import sqlite3

    with sqlite3.connect(tmp_path / "state" / "local-cluster" / "provider" / "market-local.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM local_market").fetchone()[0] == 0  # the market bills nothing


@pytest.mark.timeout(120)
def test_ray_up_refuses_a_bad_config_naming_the_key(tmp_path):
    cfg = _config(tmp_path, preemption_notice_s="soon")
    up = _ray(tmp_path, "up", str(cfg), "-y", "--no-config-cache")
    assert up.returncode != 0
    assert "raycluster: invalid cluster config: provider.markets.local.preemption_notice_s" in up.stderr
    assert "Traceback" not in up.stdout + up.stderr  # one clear line, not Ray's CLI's traceback
    assert not (tmp_path / "state" / "local-cluster" / "cluster.json").exists() and not _our_pids(tmp_path)
