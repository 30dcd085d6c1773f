"""Checkpoints and rank logs on an object store: a real local Ray cluster (the aux cluster: head + 2
workers, tests/conftest.py) whose runtime keeps them under s3://… on a real S3-compatible server on
loopback (moto's server mode, its AWS_* environment in the nodes' from their start).

A 2-rank job fails once mid-way, resumes from its checkpoint read back from the store (sha256
verified) and ends with the same result as an undisturbed run; pruning deletes old shards in the
store; a corrupted shard in the store is refused and the previous checkpoint used; every rank's
log is readable through the Coordinator.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import AUX_WORKERS, runtime_on_shared, settings_for_tests, wait_for
from tests.s3server import s3_keys

pytestmark = [pytest.mark.cluster]


@pytest.fixture(scope="module")
def s3_cluster(aux_cluster, tmp_path_factory):
    from raycluster.client.ray_client import Client

    state_dir = Path(tmp_path_factory.mktemp("rc-s3"))
    base, env = aux_cluster.s3_base, aux_cluster.s3_env
    with runtime_on_shared(aux_cluster.lc, state_dir, settings_for_tests(), workers=AUX_WORKERS,
                           storage_uri=base) as coord:
        yield {"base": base, "env": env, "client": Client(coord), "state_dir": state_dir}


def _spec(name, **cfg):
    return {"name": name, "entrypoint": "jobs.toy:counter", "num_workers": 2, "placement_strategy": "SPREAD",
            "resources": {"cpus": 0.5, "gpus": 0}, "config": {"steps": 30, **cfg},
            "checkpoint": {"every_steps": 10, "keep_last": 2}, "max_user_retries": 1}


@pytest.fixture(scope="module")
def plain(reference):
    """An undisturbed run: the result every interrupted one must end with (tests/reference.py)."""
    spec = _spec("plain")
    return {"result": reference(spec["entrypoint"], spec["config"], spec["num_workers"])}


@pytest.mark.timeout(240)
def test_a_job_resumes_from_checkpoints_in_s3_and_its_logs_are_there(s3_cluster, plain):
    client, env = s3_cluster["client"], s3_cluster["env"]
    jid = client.submit(_spec("flaky", fail_at_step=23, fail_sleep_s=2))["id"]
    final = client.wait([jid], timeout_s=150)[0]
    assert final["state"] == "SUCCEEDED", final["error"]
    assert final["user_retries"] == 1 and final["result"]["resumed_from"] == 20
    assert final["result"]["total"] == plain["result"]["total"]
    # the shards are objects in the bucket (not files on a disk); keep_last=2 pruned step 10
    keys = s3_keys(env, prefix=f"rc/checkpoints/{jid}/")
    assert keys == [f"rc/checkpoints/{jid}/step_0000000{s}/rank_{r}.pt" for s in (20, 30) for r in (0, 1)], keys
    assert not list(s3_cluster["state_dir"].glob("checkpoints/*"))
    logs = {(e["attempt"], e["rank"]): e["lines"] for e in client.logs(jid)}
    assert sorted(logs) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert any("deliberate failure at step 23" in line for line in logs[(1, 0)] + logs[(1, 1)])
    assert s3_keys(env, prefix=f"rc/logs/{jid}/") == [f"rc/logs/{jid}/a{a}-r{r}.log" for a in (1, 2) for r in (0, 1)]


@pytest.mark.timeout(240)
def test_a_corrupt_shard_in_s3_falls_back_to_the_previous_checkpoint(s3_cluster, plain):
    import boto3

    client, env = s3_cluster["client"], s3_cluster["env"]
    spec = _spec("corrupt", fail_at_step=23, fail_sleep_s=5)
    spec["checkpoint"]["keep_last"] = 3
    jid = client.submit(spec)["id"]
    wait_for(lambda: any(c["step"] == 20 and c["state"] == "COMPLETE" for c in client.checkpoints(jid)), 90,
             "checkpoint 20")
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
    s3.put_object(Bucket="rc-test", Key=f"rc/checkpoints/{jid}/step_000000020/rank_1.pt", Body=b"\x00corrupted\x00")
    final = client.wait([jid], timeout_s=150)[0]
    assert final["state"] == "SUCCEEDED", final["error"]
    assert final["result"]["resumed_from"] == 10
    assert final["result"]["total"] == plain["result"]["total"]
