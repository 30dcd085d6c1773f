"""The SSH market against a real SSH server on loopback (tests/sshd.py: asyncssh's own server running
the commands on this machine): a host is rented through the node provider, its ``ray start`` joins
our cluster over SSH, a GPU task runs there, and releasing it stops exactly that node's processes. A
host presenting another key than known_hosts holds is refused, with nothing started."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
from ray.autoscaler.tags import NODE_KIND_WORKER, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

from tests import sshd
from tests.conftest import wait_for

pytestmark = pytest.mark.timeout(180)
USD_PER_HOUR = 0.9


@pytest.fixture(scope="module")
def ssh_env(head_cluster, tmp_path_factory):
    """The SSH server on loopback, its hosts renting into the markets' head (tests/conftest.py)."""
    import ray

    d = Path(tmp_path_factory.mktemp("rc-ssh"))
    server, port = sshd.start(d / "sshd")
    lc = head_cluster
    work = Path(tempfile.mkdtemp(prefix="rcs-"))  # short: Ray's socket paths must fit in 107 bytes
    try:
        lc.connect(log_to_driver=False)
        yield {"lc": lc, "port": port, "d": d, "work": work}
    finally:
        ray.shutdown()
        sshd.stop(server)


def _host(env, known_hosts="known_hosts"):
    return {"name": "gpu-box-1", "host": "127.0.0.1", "port": env["port"], "user": getpass.getuser(),
            "key_file": str(env["d"] / "sshd" / "client_key"), "known_hosts": str(env["d"] / "sshd" / known_hosts),
            "gpus": 1, "cpus": 2, "gpu_type": "A10G", "usd_per_hour": USD_PER_HOUR,
            "ray_bin": str(Path(sys.executable).parent / "ray"), "work_dir": str(env["work"])}


def _provider(env, known_hosts="known_hosts"):
    from raycluster.provision.market.ssh import SshMarket
    from raycluster.provision.node_provider import MarketNodeProvider

    lc = env["lc"]
    rec = lc.rec.data
    state = env["d"] / f"provider-{known_hosts}"
    market = SshMarket(state / "market-ssh.db", hosts=[_host(env, known_hosts)], auth_mode=rec["auth_mode"],
                       auth_token_path=rec["auth_token_path"], stop_grace_s=1)
    cfg = {"state_dir": str(state), "head_address": lc.address, "dashboard_url": lc.dashboard_url}
    return MarketNodeProvider(cfg, "ssh-test", markets={"ssh": market}), market


def _tagged(rental_id):
    out = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("RAYCLUSTER_LOCAL_NODE") == f"ssh/{rental_id}":
                out.append(p)
        except (psutil.Error, OSError):
            continue
    return out


def test_a_rented_ssh_host_joins_runs_a_task_and_is_released_exactly(ssh_env):
    import ray

    provider, market = _provider(ssh_env)
    decoy = subprocess.Popen(["sleep", "300"])  # a process of ours on the "host" that is not the node
    try:
        (rental_id,) = provider.create_node({"market": "ssh", "kind": "on_demand", "gpu_type": "A10G"},
                                            {TAG_RAY_NODE_KIND: NODE_KIND_WORKER,
                                             TAG_RAY_USER_NODE_TYPE: "gpu_ssh"}, 1)
        rec = provider.store.get(rental_id)
        assert (rec.market, rec.kind, rec.usd_per_hour, rec.handle["host"]) == ("ssh", "on_demand", USD_PER_HOUR,
                                                                                "gpu-box-1")
        assert market.offers()[0].available == 0  # the one host is taken

        @ray.remote(num_gpus=1, num_cpus=1)
        def where():
            return ray.get_runtime_context().get_node_id()

        node_id = ray.get(where.remote(), timeout=120)  # only the ssh node has a GPU
        node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
        assert node["Labels"]["raycluster.io/rental"] == rental_id
        assert node["Labels"]["raycluster.io/ssh-host"] == "gpu-box-1"
        assert market.alive(rental_id, rec.handle) and _tagged(rental_id)
        provider.terminate_node(rental_id)
        wait_for(lambda: not _tagged(rental_id), 30, "every process of the ssh node to be gone")
        assert decoy.poll() is None  # exactly the node's processes were stopped
        assert market.held() == {} and provider.store.get(rental_id).state.value == "released"
        assert market.offers()[0].available == 1
    finally:
        decoy.kill()
        provider.release_all("test end")


def test_a_host_with_another_key_is_refused_and_nothing_starts(ssh_env):
    from raycluster.provision.market.ssh import HostKeyRefused

    provider, market = _provider(ssh_env, known_hosts="wrong_known_hosts")
    with pytest.raises(HostKeyRefused, match="not in .*wrong_known_hosts"):
        provider.create_node({"market": "ssh", "kind": "on_demand"},
                             {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: "gpu_ssh"}, 1)
    assert market.held() == {}
    (rec,) = [r for r in provider.store.list(None) if r.market == "ssh"]
    assert rec.state.value == "released" and "known_hosts" in rec.reason
    assert not any(_tagged(rec.id) for _ in [0])
    assert not os.path.exists(Path(ssh_env["work"]) / rec.id / "node.pid")
