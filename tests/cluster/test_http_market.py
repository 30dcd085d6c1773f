"""The HTTP market (a vast.ai-shaped REST client) against its local simulator
(raycluster/provision/market/http_sim.py, a real HTTP server whose instances are real local Ray
nodes), driven through the node provider: retries through injected 429/5xx, an offer gone (410), a
rent never made twice, an instance stuck in ``loading`` released (and another rented), an outbid
interruptible instance handled as a preemption, and an instance billed to us that is no node of ours
released."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests
from ray.autoscaler.tags import NODE_KIND_WORKER, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

from raycluster.util.ports import free_port
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(180)
TAGS = {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: "gpu_http"}


@pytest.fixture(scope="module")
def sim(head_cluster, tmp_path_factory):
    """The marketplace simulator on a free port, renting into the markets' head (tests/conftest.py)."""
    import ray

    d = Path(tmp_path_factory.mktemp("rc-http"))
    (d / "key").write_text("test-api-key-123\n")
    port = free_port("127.0.0.1")
    server = subprocess.Popen([sys.executable, "-m", "raycluster.provision.market.http_sim", "--port", str(port),
                               "--api-key-file", str(d / "key"), "--state-dir", str(d / "sim"), "--loading-s", "1"],
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    lc = head_cluster
    try:
        wait_for(lambda: _up(url), 30, "the marketplace simulator to answer")
        lc.connect(log_to_driver=False)
        yield {"url": url, "d": d, "lc": lc, "work": tempfile.mkdtemp(prefix="rch-")}
    finally:
        ray.shutdown()
        server.terminate()  # its shutdown stops every instance it still runs
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()


def _up(url):
    try:
        return requests.get(url + "/api/v0/instances/", timeout=1).status_code == 401
    except requests.RequestException:
        return False


def _provider(sim, join_timeout_s=60.0, name="p"):
    from raycluster.provision.market.http import HttpMarket
    from raycluster.provision.node_provider import MarketNodeProvider

    lc = sim["lc"]
    rec = lc.rec.data
    market = HttpMarket(url=sim["url"], api_key_file=str(sim["d"] / "key"), retries=5, backoff_s=0.05,
                        ray_bin=str(Path(sys.executable).parent / "ray"), work_dir=sim["work"],
                        auth_mode=rec["auth_mode"], auth_token_path=rec["auth_token_path"])
    cfg = {"state_dir": str(sim["d"] / f"provider-{name}"), "head_address": lc.address,
           "dashboard_url": lc.dashboard_url, "join_timeout_s": join_timeout_s, "auth_mode": rec["auth_mode"],
           "auth_token_path": rec["auth_token_path"]}
    return MarketNodeProvider(cfg, "http-test", markets={"http": market}), market


def _faults(sim, **kw):
    return requests.post(sim["url"] + "/_sim/faults", json=kw, timeout=5).json()


def _instances(sim):
    return requests.get(sim["url"] + "/api/v0/instances/", headers={"Authorization": "Bearer test-api-key-123"},
                        timeout=5).json()["instances"]


def _joined(sim, rental_id):
    import ray

    return any(n["Alive"] and n["Labels"].get("raycluster.io/rental") == rental_id for n in ray.nodes())


def test_rent_through_429_and_500_joins_runs_a_task_and_is_released(sim):
    import ray

    provider, market = _provider(sim, name="a")
    before = _faults(sim, http_429=2, http_500=1)["requests"]
    (rental_id,) = provider.create_node({"market": "http", "kind": "on_demand", "gpu_type": "RTX_4090"}, TAGS, 1)
    assert _faults(sim)["requests"] - before >= 4  # the refused tries were retried
    rec = provider.store.get(rental_id)
    assert (rec.kind, rec.gpu_type, rec.usd_per_hour) == ("on_demand", "RTX_4090", 0.42)  # the cheapest offer
    wait_for(lambda: _joined(sim, rental_id), 60, "the rented instance to join Ray")

    @ray.remote(num_gpus=1, num_cpus=1)
    def where():
        return ray.get_runtime_context().get_node_id()

    node = next(n for n in ray.nodes() if n["NodeID"] == ray.get(where.remote(), timeout=60))
    assert node["Labels"]["raycluster.io/rental"] == rental_id
    provider.terminate_node(rental_id)
    assert [i for i in _instances(sim) if i["label"] == rental_id] == []
    wait_for(lambda: not _joined(sim, rental_id), 60, "the released node to leave Ray")


def test_an_offer_gone_is_refused_and_a_rent_is_never_made_twice(sim):
    from raycluster.provision.market.base import CapacityExhausted, NodeLaunch

    _provider_, market = _provider(sim, name="b")
    offer = next(o for o in market.offers() if o.offer_id == "1003")
    _faults(sim, gone_offers=[1003])
    launch = NodeLaunch("rent-gone0000001", "gpu_http", sim["lc"].address)
    with pytest.raises(CapacityExhausted, match="1003 is gone"):
        market.rent(offer, launch)
    assert "rent-gone0000001" not in market.held()
    offer = next(o for o in market.offers() if o.kind == "on_demand")
    launch = NodeLaunch("rent-twice000001", "gpu_http", sim["lc"].address)
    first = market.rent(offer, launch)
    again = market.rent(offer, launch)  # the same request retried: the same instance
    assert first["instance_id"] == again["instance_id"]
    assert len([i for i in _instances(sim) if i["label"] == "rent-twice000001"]) == 1
    market.release("rent-twice000001", first)
    market.release("rent-twice000001", first)  # twice: no error
    assert "rent-twice000001" not in market.held()


def test_an_instance_stuck_loading_is_released_and_a_stray_one_too(sim):
    provider, market = _provider(sim, join_timeout_s=8, name="c")
    _faults(sim, stuck_loading=1)
    (stuck,) = provider.create_node({"market": "http", "kind": "on_demand"}, TAGS, 1)
    # an instance labelled as a rental of ours that no provider made (e.g. a crash between PUT and record)
    offer = next(o for o in market.offers() if o.kind == "on_demand")
    from raycluster.provision.market.base import NodeLaunch

    stray = market.rent(offer, NodeLaunch("rent-stray0000001", "gpu_http", sim["lc"].address))
    wait_for(lambda: stuck not in provider.non_terminated_nodes({}), 60, "the stuck rental to be released")
    rec = provider.store.get(stuck)
    assert rec.state.value == "released" and rec.reason.startswith("never joined Ray")
    labels = {i["label"] for i in _instances(sim)}
    assert stuck not in labels and "rent-stray0000001" not in labels, stray
    (fresh,) = provider.create_node({"market": "http", "kind": "on_demand"}, TAGS, 1)  # the replacement
    wait_for(lambda: _joined(sim, fresh), 60, "the replacement to join Ray")
    provider.release_all("test end")


def test_an_outbid_interruptible_instance_is_a_preemption(sim):
    provider, market = _provider(sim, name="d")
    (rental_id,) = provider.create_node({"market": "http", "kind": "spot"}, TAGS, 1)
    rec = provider.store.get(rental_id)
    assert rec.kind == "spot" and rec.usd_per_hour == 0.18  # the bid: the offer's minimum
    wait_for(lambda: _joined(sim, rental_id), 60, "the spot instance to join Ray")
    _faults(sim, outbid=rec.handle["instance_id"])

    def released():  # each listing (an autoscaler tick) reconciles with the market
        provider.non_terminated_nodes({})
        return provider.store.get(rental_id).state.value == "released"

    wait_for(released, 30, "the outbid rental to be released", poll_s=0.5)
    rec = provider.store.get(rental_id)
    assert rec.preempt_deadline is not None and rec.reason == "preempted"
    assert [i for i in _instances(sim) if i["label"] == rental_id] == []  # no longer paid for
