"""Integration: the runtime on a real local multi-node Ray cluster (head + 3 worker nodes).

Covers: concurrent jobs of different priorities, node loss mid-training with exact resume,
Coordinator kill, corrupt checkpoint fallback, invalid specs, cancel.
"""

from __future__ import annotations

import glob
import os
import time

import pytest
import ray

from raycluster.errors import EntrypointImportError, IllegalTransition, InfeasibleJob, InvalidJobSpec, JobNotFound
from tests.conftest import coordinator_restarted, wait_for

pytestmark = [pytest.mark.cluster]


def counter_spec(name, steps=20, sleep=0.0, workers=1, **extra):
    cfg = {"steps": steps, "sleep_per_step_s": sleep}
    cfg.update(extra.pop("config", {}))
    return {"name": name, "entrypoint": "jobs.toy:counter", "num_workers": workers, "config": cfg,
            "resources": {"cpus": 0.5, "gpus": 0}, "checkpoint": {"every_steps": 5, "keep_last": 3}, **extra}


def state_of(client, jid):
    return client.get(jid)["state"]


def our_pg(job_id, attempt):
    name = f"rc-{job_id}-a{attempt}"
    for info in ray.util.placement_group_table().values():
        if info.get("name") == name:
            return info
    return None


@pytest.mark.timeout(240)
def test_three_jobs_different_priorities_run_concurrently(client):
    small = {"cnn": {"steps": 60, "batch_size": 16}, "transformer": {"steps": 40, "batch_size": 16},
             "lstm": {"steps": 60, "batch_size": 16}}
    specs = [
        {"name": "cnn", "entrypoint": "jobs.cnn:train", "num_workers": 2, "priority": 80,
         "placement_strategy": "SPREAD", "resources": {"gpus": 0.5, "cpus": 1}, "config": small["cnn"],
         "checkpoint": {"every_steps": 20, "keep_last": 2}},
        {"name": "transformer", "entrypoint": "jobs.transformer:train", "priority": 50,
         "resources": {"gpus": 0.5, "cpus": 1}, "config": small["transformer"], "checkpoint": {"every_steps": 20}},
        {"name": "lstm", "entrypoint": "jobs.lstm:train", "priority": 20, "resources": {"gpus": 0.5, "cpus": 1},
         "config": small["lstm"], "checkpoint": {"every_steps": 20}},
    ]
    ids = [client.submit(s)["id"] for s in specs]
    final = client.wait(ids, timeout_s=200)
    assert [j["state"] for j in final] == ["SUCCEEDED"] * 3, [(j["state"], j["error"]) for j in final]
    # all three were RUNNING at the same time
    spans = []
    for j in final:
        tr = {t["to"]: t["ts"] for t in client.get(j["id"])["transitions"]}
        spans.append((tr["RUNNING"], tr["SUCCEEDED"]))
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans
    for j in final:
        assert j["result"]["steps"] > 0 and len(j["result"]["weights_sha256"]) == 64
        assert "loss" in j["last_metrics"]
        assert [c["step"] for c in client.checkpoints(j["id"]) if c["state"] == "COMPLETE"]
        assert len(client.metrics(j["id"])) > 0


@pytest.mark.timeout(300)
def test_node_killed_mid_training_resumes_with_identical_result(cluster, client, reference):
    lc = cluster["lc"]
    cfg = {"steps": 120, "batch_size": 16, "sleep_per_step_s": 0.05, "report_every": 5}
    spec = {"name": "cnn-ddp", "entrypoint": "jobs.cnn:train", "num_workers": 2, "placement_strategy": "STRICT_SPREAD",
            "resources": {"gpus": 1, "cpus": 1}, "config": cfg, "checkpoint": {"every_steps": 10, "keep_last": 3},
            "max_restarts": 3}
    job = client.submit(spec)
    jid = job["id"]
    wait_for(lambda: any(c["state"] == "COMPLETE" and c["step"] >= 30 for c in client.checkpoints(jid)), 120,
             "a checkpoint at step >= 30")
    pg = our_pg(jid, 1)
    victim_ray_id = pg["bundles_to_node_id"][1]
    victim = next(n for n in lc.nodes() if n.ray_node_id == victim_ray_id)
    assert victim.role == "worker"
    lc.kill_node(victim.name)
    undisturbed = reference.start("jobs.cnn:train", cfg, 2)  # (tests/reference.py: computed meanwhile)
    wait_for(lambda: client.get(jid)["attempt"] >= 2, 90, "the job to be placed again")
    lc.add_worker()  # give the cluster its capacity back for later tests
    final = client.wait([jid], timeout_s=150)[0]
    assert final["state"] == "SUCCEEDED", final["error"]
    states = [t["to"] for t in final["transitions"]]
    assert "RECOVERING" in states and final["system_restarts"] == 1
    baseline = undisturbed.result(timeout=300)
    assert final["result"]["weights_sha256"] == baseline["weights_sha256"]
    for key in ("final_loss", "final_accuracy", "steps"):
        assert final["result"][key] == baseline[key], key


@pytest.mark.timeout(300)
def test_an_elastic_ddp_gang_shrinks_on_node_loss_grows_back_and_sees_its_data_exactly_once(cluster, client,
                                                                                             tmp_path):
    """A 4-worker elastic DDP job (num_workers {min 2, max 4}, one GPU per worker: one per node)
    loses a node: it goes on at 3 from its newest checkpoint without waiting for a replacement;
    a node returns: after ELASTIC_GROW_INTERVAL_S (the default) it is checkpointed and placed again
    at 4. The sample ids it trained on (rank 0 gathers every rank's and checkpoints them) cover
    every epoch exactly once across both changes."""
    lc = cluster["lc"]
    lc.add_worker()  # a 4th node of the shared cluster's shape: room for 4 workers
    fast = tmp_path / "fast"
    cfg = {"num_samples": 96, "global_batch": 12, "epochs": 40, "sleep_per_step_s": 0.2, "fast_file": str(fast)}
    spec = {"name": "elastic-ddp", "entrypoint": "jobs.toy:elastic", "num_workers": {"min": 2, "max": 4},
            "resources": {"gpus": 1, "cpus": 0.5}, "config": cfg, "checkpoint": {"every_steps": 5, "keep_last": 3}}
    jid = client.submit(spec)["id"]
    try:
        wait_for(lambda: client.get(jid)["world_size"] == 4 and any(
            c["state"] == "COMPLETE" and c["step"] >= 5 for c in client.checkpoints(jid)), 120,
            "the gang running at 4 with a checkpoint at step >= 5")
        victim_ray_id = our_pg(jid, 1)["bundles_to_node_id"][3]
        victim = next(n for n in lc.nodes() if n.ray_node_id == victim_ray_id)
        t0 = time.monotonic()
        lc.kill_node(victim.name)
        wait_for(lambda: (j := client.get(jid))["state"] == "RUNNING" and j["attempt"] == 2, 90,
                 "the gang running again")
        shrunk = client.get(jid)
        print(f"\nelastic gang running at {shrunk['world_size']} {time.monotonic() - t0:.1f} s after its node was "
              f"killed")
        assert shrunk["world_size"] == 3  # no replacement waited for: the three nodes left
        lc.add_worker()  # the node returns
        wait_for(lambda: (j := client.get(jid))["state"] == "RUNNING" and j["attempt"] == 3, 150,
                 "the gang placed again after growing")
        assert client.get(jid)["world_size"] == 4
        fast.touch()
        final = client.wait([jid], timeout_s=150)[0]
    finally:
        fast.touch()
        if client.get(jid)["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            client.cancel(jid)
    assert final["state"] == "SUCCEEDED", final["error"]
    r = final["result"]
    assert [w for w, _steps in r["world_sizes"]] == [4, 3, 4], r["world_sizes"]
    assert r["steps"] == 40 * 8 and sum(n for _w, n in r["world_sizes"]) == r["steps"]
    seen = r["seen"]
    assert len(seen) == 40 * 96
    for epoch in range(40):  # every sample of every epoch once: none skipped or repeated by a resize
        assert sorted(seen[epoch * 96:(epoch + 1) * 96]) == list(range(96)), epoch
    causes = [t["cause"] for t in final["transitions"]]
    assert causes.count("elastic_grow") == 1 and "node_lost" in causes
    assert final["system_restarts"] == 1  # the node loss; the grow spent none
    workers = [n for n in lc.nodes() if n.role == "worker" and n.alive]
    if len(workers) > 3:  # the shared cluster's shape again (3 workers) for the next tests
        lc.kill_node(workers[-1].name)


@pytest.mark.timeout(240)
def test_coordinator_killed_during_run_loses_nothing(cluster, client, tmp_path, reference):
    coord = cluster["coord"]
    go = tmp_path / "go"  # the survivors hold at step 20 until it exists: mid-run for sure, no pacing
    ids = [client.submit(counter_spec(f"survivor-{i}", steps=40, workers=1 + i % 2,
                                      config={"hold_at_step": 20, "hold_until_file": str(go)}))["id"]
           for i in range(3)]
    try:
        wait_for(lambda: all(state_of(client, j) == "RUNNING" for j in ids), 60, "all three RUNNING")
        wait_for(lambda: all(client.get(j)["last_metrics"].get("step", 0) >= 20 for j in ids), 60, "step 20")
        pid_before = ray.get(coord.ping.remote())["pid"]
        ray.kill(coord, no_restart=False)
        wait_for(lambda: coordinator_restarted(coord, pid_before), 60, "the Coordinator to restart")
        assert all(not client.get(j)["state"] in ("SUCCEEDED", "FAILED") for j in ids)  # killed mid-run
        queued_during = client.submit(counter_spec("after-restart", steps=5))["id"]
    finally:
        go.touch()  # (also when the test fails: held ranks would keep their resources from later tests)
    final = client.wait(ids + [queued_during], timeout_s=180)
    assert [j["state"] for j in final] == ["SUCCEEDED"] * 4, [(j["state"], j["error"]) for j in final]
    undisturbed = {"result": reference("jobs.toy:counter", counter_spec("undisturbed", steps=40)["config"])}
    for j in final[:3]:
        assert "coordinator restarted" in " ".join(t["reason"] or "" for t in j["transitions"])
        assert j["system_restarts"] == 0  # a control-plane restart is not the job's fault
        if j["spec"]["num_workers"] == 1:
            assert j["result"]["total"] == undisturbed["result"]["total"]


@pytest.mark.timeout(180)
def test_corrupt_latest_checkpoint_falls_back_to_previous(cluster, client, reference):
    spec = counter_spec("corrupt", steps=30, config={"fail_at_step": 23, "fail_sleep_s": 4}, max_user_retries=1)
    spec["checkpoint"] = {"every_steps": 10, "keep_last": 3}
    jid = client.submit(spec)["id"]
    wait_for(lambda: any(c["step"] == 20 and c["state"] == "COMPLETE" for c in client.checkpoints(jid)), 60,
             "checkpoint 20")
    [shard] = glob.glob(str(cluster["state_dir"] / "checkpoints" / jid / "step_000000020" / "rank_0.pt"))
    with open(shard, "r+b") as f:  # flip bytes in the middle of the latest checkpoint
        f.seek(os.path.getsize(shard) // 2)
        f.write(b"\x00corrupted\x00")
    final = client.wait([jid], timeout_s=120)[0]
    assert final["state"] == "SUCCEEDED", final["error"]
    assert final["user_retries"] == 1 and final["result"]["resumed_from"] == 10
    states = {c["step"]: c["state"] for c in client.checkpoints(jid)}
    assert states[20] in ("CORRUPT", "COMPLETE")  # marked corrupt, then rewritten by the retry
    assert final["result"]["total"] == reference("jobs.toy:counter", counter_spec("plain", steps=30)["config"])["total"]


@pytest.mark.timeout(180)
def test_invalid_specs_give_clear_errors_and_disturb_nothing(client):
    running = client.submit(counter_spec("bystander", steps=15, sleep=0.1))["id"]
    before = len(client.list())
    cases = [
        ({"name": "x"}, InvalidJobSpec, "entrypoint"),
        ({"name": "x", "entrypoint": "jobs.toy:noop", "priority": 5000}, InvalidJobSpec, "priority"),
        ({"name": "x", "entrypoint": "jobs.toy:noop", "num_workers": -1}, InvalidJobSpec, "num_workers"),
        ({"name": "x", "entrypoint": "jobs.toy:noop", "gpu": 1}, InvalidJobSpec, "gpu"),
        ({"name": "x", "entrypoint": "jobs.nope:train"}, EntrypointImportError, "entrypoint"),
        ({"name": "x", "entrypoint": "jobs.toy:missing_fn"}, EntrypointImportError, "entrypoint"),
        ({"name": "x", "entrypoint": "jobs.toy:noop", "num_workers": 40, "resources": {"gpus": 1}},
         InfeasibleJob, "num_workers"),
        ({"name": "x", "entrypoint": "jobs.toy:noop", "num_workers": 2, "placement_strategy": "STRICT_PACK",
          "resources": {"gpus": 1}}, InfeasibleJob, "num_workers"),
    ]
    for spec, exc_type, field in cases:
        with pytest.raises(exc_type) as ei:
            # bypass client-side validation so the Coordinator's own checks are exercised
            ray.get(client._h.submit.remote(spec))
        err = ei.value.cause if hasattr(ei.value, "cause") else ei.value
        assert isinstance(err, exc_type) and err.field == field, (spec, err)
        with pytest.raises(exc_type):
            client.submit(spec)
    assert len(client.list()) == before
    # a batch through the actor: one bad item (the Coordinator's own check) fails it whole, naming it
    good = counter_spec("batch-ok", steps=2)
    for spec, exc_type, field in cases[4:]:
        with pytest.raises(exc_type) as ei:
            client._call("submit_many", [{"spec": good}, {"spec": spec}])
        assert ei.value.field == f"jobs[1].spec.{field}", (spec, ei.value.field)
    assert len(client.list()) == before
    batch = client.submit_many([counter_spec(f"batch-{i}", steps=2) for i in range(3)])
    assert len({j["id"] for j in batch}) == 3 and len(client.list()) == before + 3
    with pytest.raises(JobNotFound):
        client.get("job-doesnotexist")
    assert client.wait([running], timeout_s=60)[0]["state"] == "SUCCEEDED"
    assert all(j["state"] == "SUCCEEDED" for j in client.wait([j["id"] for j in batch], timeout_s=60))
    with pytest.raises(IllegalTransition):
        client.cancel(running)


@pytest.mark.timeout(120)
def test_user_error_fails_with_traceback(client):
    job = client.wait([client.submit({"name": "boom", "entrypoint": "jobs.toy:fail", "num_workers": 2,
                                      "resources": {"cpus": 0.5}})["id"]], timeout_s=60)[0]
    assert job["state"] == "FAILED" and job["system_restarts"] == 0
    assert "ValueError: deliberate failure in user code" in job["error"] and "Traceback" in job["error"]


@pytest.mark.timeout(120)
def test_cancel_running_job_frees_everything(cluster, client):
    total = ray.cluster_resources()
    jid = client.submit(counter_spec("to-cancel", steps=10_000, sleep=0.1, workers=2,
                                     resources={"cpus": 1, "gpus": 1}))["id"]
    wait_for(lambda: client.get(jid)["last_metrics"].get("step", 0) >= 3, 60, "the job to make progress")
    assert our_pg(jid, 1)["state"] == "CREATED"
    cancelled = client.cancel(jid)
    assert cancelled["state"] == "CANCELLED"
    assert our_pg(jid, 1)["state"] == "REMOVED"
    from ray.util.state import list_tasks

    def tasks_gone():
        tasks = [t for r in (0, 1) for t in list_tasks(
            address=cluster["lc"].address, filters=[("name", "=", f"to-cancel:{jid}:a1:r{r}")],
            raise_on_missing_output=False)]
        return len(tasks) == 2 and all(t.state not in ("RUNNING", "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER")
                                       for t in tasks)

    wait_for(tasks_gone, 30, "rank tasks to stop")
    wait_for(lambda: ray.available_resources().get("GPU", 0) == total.get("GPU")
             and ray.available_resources().get("CPU", 0) == total.get("CPU"), 30, "resources to be free again")
    step_at_cancel = client.get(jid)["last_metrics"]["step"]
    time.sleep(1.0)
    assert client.get(jid)["last_metrics"]["step"] == step_at_cancel  # nothing is still training
