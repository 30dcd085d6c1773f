"""An elastic local cluster: Ray's autoscaler (v2) with our MarketNodeProvider renting worker nodes
from the local market (real ``ray start`` processes), all on this machine.

One cluster for the module: a head with 1 CPU and no GPU, one node type ``gpu_spot`` (local market,
spot T4: 2 CPUs, 1 GPU, at most 2), idle timeout 8 s, autoscaler tick 1 s."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(240)

SPOT_USD_PER_HOUR, ON_DEMAND_USD_PER_HOUR = 0.11, 0.42


@pytest.fixture(scope="module")
def elastic(tmp_path_factory):
    import ray

    from raycluster.provision.autoscaling import ElasticConfig
    from raycluster.provision.local.cluster import LocalCluster

    state_dir = Path(tmp_path_factory.mktemp("rc-elastic"))
    cfg = ElasticConfig(
        node_types={"gpu_spot": {"market": "local", "kind": "spot", "gpu_type": "T4", "max_workers": 2,
                                 "resources": {"CPU": 2, "GPU": 1}}},
        markets={"local": {"gpu_types": {"T4": {"gpus": 1, "cpus": 2, "capacity": 2,
                                                "spot_usd_per_hour": SPOT_USD_PER_HOUR,
                                                "on_demand_usd_per_hour": ON_DEMAND_USD_PER_HOUR}},
                           "preemption_notice_s": 3}},
        idle_timeout_s=8, update_interval_s=1, join_timeout_s=120, budget={"cooldown_s": 2})
    lc = LocalCluster(state_dir, num_workers=0, head_cpus=1, elastic=cfg)
    lc.start()
    try:
        lc.connect(log_to_driver=False)
        yield lc
    finally:
        ray.shutdown()
        lc.stop()
        market_db = lc.cluster_dir / "provider" / "market-local.db"
        import sqlite3

        with sqlite3.connect(market_db) as conn:  # the market's own books: nothing rented to us
            assert conn.execute("SELECT COUNT(*) FROM local_market").fetchone()[0] == 0


@pytest.fixture(scope="module")
def client(elastic):
    from raycluster.api.deploy import deploy_api
    from raycluster.client.ray_client import Client
    from raycluster.control.actors import start_runtime
    from raycluster.util.ports import free_port

    start_runtime(elastic.state_dir)
    info = deploy_api(elastic.state_dir, port=free_port("127.0.0.1"))
    client = Client()
    client.api_url = info["url"]
    client.api_headers = {"Authorization": "Bearer " + Path(info["token_path"]).read_text().strip()}
    yield client
    from ray import serve

    serve.shutdown()


def _provider(lc):
    from raycluster.provision.local.record import read_json
    from raycluster.provision.node_provider import MarketNodeProvider

    config = read_json(lc.cluster_dir / "autoscaling.json")
    return MarketNodeProvider(config["provider"], config["cluster_name"])


def _rentals(lc, live_only=True):
    return [r for r in _provider(lc).store.list(None) if r.market == "local"
            and (not live_only or r.state.value in ("requested", "running"))]


@pytest.mark.timeout(180)
def test_a_gpu_task_rents_a_spot_node_which_is_released_when_idle(elastic):
    import ray

    @ray.remote(num_gpus=1, num_cpus=1)
    def where():
        return ray.get_runtime_context().get_node_id()

    t0 = time.monotonic()
    node_id = ray.get(where.remote(), timeout=120)  # the head has no GPU: only a rented node can run it
    scale_up_s = time.monotonic() - t0
    (rental,) = _rentals(elastic)
    assert (rental.kind, rental.gpu_type, rental.usd_per_hour, rental.node_type) == (
        "spot", "T4", SPOT_USD_PER_HOUR, "gpu_spot")
    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    assert node["Labels"]["raycluster.io/rental"] == rental.id
    assert node["Labels"]["raycluster.io/kind"] == "spot" and node["Labels"]["raycluster.io/market"] == "local"
    assert node["Labels"].get("ray.io/market-type") == "spot"
    pid = rental.handle["pid"]
    assert psutil.pid_exists(pid)
    # idle for the idle timeout: the autoscaler terminates it, the market stops exactly its processes
    wait_for(lambda: _provider(elastic).store.get(rental.id).state.value == "released", 90,
             "the idle rented node to be released")
    gone = _provider(elastic).store.get(rental.id)
    assert gone.reason == "terminated by the autoscaler" and not _rentals(elastic)
    assert gone.released_at is not None and gone.cost_usd(time.time()) > 0
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 30,
             "the node's process to exit")
    print(f"scale-up {scale_up_s:.1f}s")


def _cli(lc, *args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "raycluster.cli", "--state-dir", str(lc.state_dir), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(240)
def test_a_queued_gpu_job_makes_the_cluster_rent_and_the_cli_shows_the_node(elastic, client):
    """A job needing a GPU on a cluster with none up is accepted (the autoscaler may rent one), its
    gang is told to the autoscaler as demand, a spot node is rented, the job SUCCEEDS there;
    ``raycluster nodes`` lists the rental with its market, kind and price."""
    import json

    job = client.submit({"name": "needs-a-gpu", "entrypoint": "jobs.toy:counter",
                         "config": {"steps": 10, "sleep_per_step_s": 0.5},
                         "resources": {"gpus": 1, "cpus": 1}})
    # one node identity: the running rank names its Ray node and the rental that node is ...
    wait_for(lambda: (client.get(job["id"]).get("ranks") or [{}])[0].get("rental"), 180, "the rank on a rented node")
    rank = client.get(job["id"])["ranks"][0]
    wait_for(lambda: client.get(job["id"])["state"] == "SUCCEEDED", 180, "the GPU job to succeed on a rented node")

    def nodes():
        out = _cli(elastic, "--json", "nodes", "--all")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)
    # ... and the rental names that Ray node (noted by the provider at its next tick)
    wait_for(lambda: any(r["id"] == rank["rental"] and r["ray_node_id"] == rank["node_id"] for r in nodes()), 60,
             "the rental to carry its Ray node id")
    rows = nodes()
    assert any(r["market"] == "local" and r["kind"] == "spot" and r["usd_per_hour"] == SPOT_USD_PER_HOUR
               and r["cost_usd"] >= 0 for r in rows), rows
    bad = _cli(elastic, "market", "preempt", "rent-nosuchnode")
    assert bad.returncode == 4 and "rents out no node 'rent-nosuchnode'" in bad.stderr
    # what it cost and why it scaled: CLI and HTTP read the same books
    cost = json.loads(_cli(elastic, "--json", "cost").stdout)
    assert cost["spend_usd"] > 0 and cost["by_kind_usd"]["spot"] == cost["spend_usd"]
    assert cost["saved_vs_on_demand_usd"] > 0 and cost["max_hourly_budget_usd"] is None
    events = json.loads(_cli(elastic, "--json", "events").stdout)
    assert any(e["source"] == "budget" and e["action"] == "scale_up" for e in events), events
    import requests as _rq

    http_cost = _rq.get(client.api_url + "/cost", headers=client.api_headers, timeout=30).json()
    assert http_cost["rentals"] == cost["rentals"] and http_cost["spend_usd"] >= cost["spend_usd"]
    http_events = _rq.get(client.api_url + "/events", headers=client.api_headers, timeout=30).json()["events"]
    assert [e["id"] for e in http_events][:len(events)] == [e["id"] for e in events]
    bad_cap = _cli(elastic, "budget", "--set", "-1")
    assert bad_cap.returncode == 2 and "max_hourly_budget_usd must be a number >= 0" in bad_cap.stderr
    # the same over the HTTP API
    import requests

    listed = requests.get(client.api_url + "/rentals", params={"all": "true"}, headers=client.api_headers,
                          timeout=30).json()["rentals"]
    assert any(r["market"] == "local" and r["kind"] == "spot" for r in listed), listed
    gone = requests.post(client.api_url + "/rentals/rent-nosuchnode/preempt", json={"notice_s": 1},
                         headers=client.api_headers, timeout=30)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "market_unknown_node"
    # nothing queued or running any more: the demand is cleared and the idle node given back
    wait_for(lambda: not _rentals(elastic), 120, "the idle node to be released after the job")


@pytest.mark.timeout(420)
def test_a_spot_node_preempted_mid_training_is_replaced_and_the_job_resumes_identically(elastic, client, reference):
    """A 2-worker STRICT_SPREAD DDP job on two rented spot nodes; the market preempts one of them
    mid-training (3 s notice): the node is drained in Ray (reason PREEMPTION) and killed, its rental
    ends, the job recovers from its checkpoint, a replacement node is rented for the gang, and the job
    ends with the same weights as an undisturbed run."""
    import ray
    from ray.util.state import get_node

    from raycluster.provision.market.local import LocalMarket

    # (paced: still training when the test sees its checkpoint at step 30 and preempts a node; the pace
    # changes no weight)
    cfg = {"steps": 120, "batch_size": 16, "sleep_per_step_s": 0.1, "report_every": 5}
    spec = {"name": "cnn-spot", "entrypoint": "jobs.cnn:train", "num_workers": 2, "placement_strategy": "STRICT_SPREAD",
            "resources": {"gpus": 1, "cpus": 1}, "config": cfg, "checkpoint": {"every_steps": 10, "keep_last": 3},
            "max_restarts": 3}
    jid = client.submit(spec)["id"]
    wait_for(lambda: any(c["state"] == "COMPLETE" and c["step"] >= 30 for c in client.checkpoints(jid)), 240,
             "a checkpoint at step >= 30")
    pg = next(i for i in ray.util.placement_group_table().values() if i.get("name") == f"rc-{jid}-a1")
    victim_node = pg["bundles_to_node_id"][1]
    victim = next(n for n in ray.nodes() if n["NodeID"] == victim_node)["Labels"]["raycluster.io/rental"]
    market = LocalMarket(elastic.cluster_dir / "provider" / "market-local.db",
                         elastic.cluster_dir / "provider" / "market-local")
    assert victim in market.held(), (victim, _provider(elastic).store.get(victim), client.get(jid)["state"])
    notice = market.preempt(victim, notice_s=3)
    undisturbed = reference.start("jobs.cnn:train", cfg, 2)  # (tests/reference.py: computed meanwhile)
    wait_for(lambda: client.get(jid)["attempt"] >= 2, 120, "the job to be placed again")
    final = client.wait([jid], timeout_s=300)[0]
    assert final["state"] == "SUCCEEDED", final["error"]
    # issue 20: on spot a preemption is the normal case: its own cause, no restart spent
    assert [t["cause"] for t in final["transitions"] if t["to"] == "RECOVERING"] == ["spot_preempted"], \
        final["transitions"]
    assert final["system_restarts"] == 0
    assert final["result"]["weights_sha256"] == undisturbed.result(timeout=300)["weights_sha256"]
    # the preemption is counted, and the job paid for both attempts: the time lost with the first too
    from raycluster.store.usage import UsageStore

    assert final["preemptions"] == 1 and final["cost_usd"] > 0
    usage = UsageStore(elastic.state_dir / "jobs.db").rows([jid])
    assert sorted({u["attempt"] for u in usage}) == [1, 2] and all(u["end"] is not None for u in usage)
    assert len([u for u in usage if u["attempt"] == 1]) == 2  # its two spot nodes, the preempted one too
    gone = _provider(elastic).store.get(victim)
    assert gone.state.value == "released" and gone.preempt_deadline is not None
    assert gone.reason == "preempted", gone.reason  # not "lost: the market no longer runs it"
    dead = wait_for(lambda: (n := get_node(victim_node, address=elastic.dashboard_url)) and n.state == "DEAD" and n,
                    60, "Ray to see the node dead")
    assert dead.state_message.startswith("Terminated due to preemption"), dead.state_message
    # the gang needed two nodes again: a replacement was rented after the notice
    assert [r for r in _rentals(elastic, live_only=False) if r.created_at > notice.deadline - 3]


@pytest.mark.timeout(300)
def test_a_rented_node_killed_without_notice_is_replaced_and_the_strict_spread_gang_succeeds(elastic, client):
    """A 2-worker STRICT_SPREAD job on two rented nodes; one node's processes are SIGKILLed (a host
    lost, no notice): its rental is ended as lost, the job recovers from its checkpoint, a
    replacement node is rented (the gang needs two distinct nodes again) and the job SUCCEEDS."""
    import ray

    from raycluster.provision.local.process import LocalNodeLauncher
    from raycluster.provision.market.local import LocalMarket

    spec = {"name": "spread-kill", "entrypoint": "jobs.toy:counter", "num_workers": 2,
            "placement_strategy": "STRICT_SPREAD", "resources": {"gpus": 1, "cpus": 1},
            "config": {"steps": 200, "sleep_per_step_s": 0.05}, "checkpoint": {"every_steps": 10, "keep_last": 2},
            "max_restarts": 3}
    jid = client.submit(spec)["id"]
    wait_for(lambda: any(c["state"] == "COMPLETE" and c["step"] >= 20 for c in client.checkpoints(jid)), 240,
             "a checkpoint at step >= 20")
    pg = next(i for i in ray.util.placement_group_table().values() if i.get("name") == f"rc-{jid}-a1")
    victim = next(n for n in ray.nodes() if n["NodeID"] == pg["bundles_to_node_id"][1])["Labels"]["raycluster.io/rental"]
    market = LocalMarket(elastic.cluster_dir / "provider" / "market-local.db",
                         elastic.cluster_dir / "provider" / "market-local")
    handle = market.held()[victim]
    killed_at = time.time()
    launcher = LocalNodeLauncher.attach(victim, handle["pid"], handle["pgid"], handle.get("create_time"),
                                        handle["log_path"], tag=handle.get("tag"))
    launcher.kill()  # SIGKILL to the node's whole process group: no drain, no notice
    final = client.wait([jid], timeout_s=240)[0]
    assert final["state"] == "SUCCEEDED", final["error"]
    assert final["system_restarts"] == 1 and final["result"]["resumed_from"] >= 20
    assert final["preemptions"] == 0  # a node lost without notice is not a preemption
    lost = _provider(elastic).store.get(victim)
    assert lost.state.value == "released" and "lost" in (lost.reason or ""), lost
    assert victim not in market.held()
    # two distinct nodes were needed again: a node rented after the kill ran attempt 2
    assert [r for r in _rentals(elastic, live_only=False) if r.created_at > killed_at]
