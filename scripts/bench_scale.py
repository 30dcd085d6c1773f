#!/usr/bin/env python
"""Renting benchmark (issue "Rent GPUs"). Writes JSON.

(1) Provider calls per second at ``--nodes`` rented nodes (1,000 by default): MarketNodeProvider over
    its SQLite rental table with a market in memory (tests/fakes.py: FakeMarket), the calls Ray's
    autoscaler v2 makes each tick — ``non_terminated_nodes`` (which also reconciles with the market),
    ``node_tags`` and ``is_running`` for every node — and ``set_node_tags`` / ``create_node``.
    Milliseconds per autoscaler tick's worth of calls, and calls/s of each.
(2) On a real elastic local cluster (Ray's autoscaler v2 + our provider + the local market, tick
    ``--tick-s``): a 1-GPU task on a cluster with no GPU → seconds until it runs on a rented node
    (submit → running) and from its end until the idle node is released (idle timeout
    ``--idle-s``), ``--rounds`` times.
(3) Side by side, in the same run: the same head and node type with Ray's *own* autoscaler v2
    launching plain local nodes through Ray's own fake multi-node provider (``fake_multinode``:
    raylets started inside the autoscaler's process) — the same two latencies. The goal: ours
    within one autoscaler tick of Ray's own.

Usage: python scripts/bench_scale.py [--nodes 1000] [--rounds 2] [--tick-s 5] [--idle-s 60]
The tick and idle timeout default to a user's (ElasticConfig: update_interval_s 5, idle_timeout_s 60).
       [--skip-cluster] [--out bench-results/bench_scale.json]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import log, write_result  # noqa: E402


def provider_calls(nodes: int) -> dict:
    from ray.autoscaler.tags import NODE_KIND_WORKER, TAG_RAY_LAUNCH_REQUEST, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE

    from raycluster.provision.node_provider import MarketNodeProvider
    from tests.fakes import FakeMarket

    d = Path(tempfile.mkdtemp(prefix="rc-bench-scale-"))
    market = FakeMarket(capacity=nodes + 10)
    p = MarketNodeProvider({"state_dir": str(d), "head_address": "127.0.0.1:1", "head_node_id": "head-b"}, "bench",
                           markets={"fake": market})
    tags = {TAG_RAY_NODE_KIND: NODE_KIND_WORKER, TAG_RAY_USER_NODE_TYPE: "gpu_spot"}
    t0 = time.perf_counter()
    for i in range(nodes // 10):
        p.create_node({"market": "fake", "kind": "spot"}, {**tags, TAG_RAY_LAUNCH_REQUEST: f"r{i}"}, 10)
    create_s = time.perf_counter() - t0

    def timed(fn, n):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n

    ids = p.non_terminated_nodes({})
    list_s = timed(lambda: p.non_terminated_nodes({}), 5)
    t = time.perf_counter()
    for node_id in ids:
        p.node_tags(node_id)
    tags_s = (time.perf_counter() - t) / len(ids)
    t = time.perf_counter()
    for node_id in ids:
        p.is_running(node_id)
    running_s = (time.perf_counter() - t) / len(ids)
    t = time.perf_counter()
    for node_id in ids[:200]:
        p.set_node_tags(node_id, {"ray-node-status": "up-to-date"})
    set_s = (time.perf_counter() - t) / 200
    tick_ms = (list_s + len(ids) * (tags_s + running_s)) * 1000
    out = {"nodes": len(ids) - 1, "create_node_per_s": round(nodes / create_s, 1),
           "non_terminated_nodes_ms": round(list_s * 1000, 2), "node_tags_per_s": round(1 / tags_s),
           "is_running_per_s": round(1 / running_s), "set_node_tags_per_s": round(1 / set_s),
           "autoscaler_tick_of_calls_ms": round(tick_ms, 1)}
    log(f"(1) provider at {out['nodes']} nodes: {out}")
    return out


def _ray_own_cluster_class():
    """A LocalCluster whose head runs Ray's own autoscaler v2 with Ray's own ``fake_multinode``
    provider (plain local raylets, no market, no rental books) for the same node types."""
    from raycluster.provision import autoscaling
    from raycluster.provision.local.cluster import LocalCluster
    from raycluster.provision.local.record import read_json
    from raycluster.util.files import atomic_write_json

    FAKE_HEAD_TYPE = "ray.head.default"  # ray.autoscaler._private.fake_multi_node.node_provider
    FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"

    class RayOwnAutoscalerCluster(LocalCluster):
        def _autoscaling_args(self) -> list[str]:
            path = autoscaling.write_config(self.elastic, self.rec.data, self.cluster_dir, self.head_cpus)
            cfg = read_json(path)
            # (as an external module: the wheel lacks the defaults file of type fake_multinode)
            cfg["provider"] = {"type": "external", "module": FAKE_PROVIDER, "gcs_address": self.rec.data["address"],
                               "launch_multiple": True, "head_node_id": cfg["provider"]["head_node_id"],
                               "disable_node_updaters": True, "disable_launch_config_check": True}
            for t in cfg["available_node_types"].values():
                t["node_config"] = {}
            # Ray's fake provider lists its head under its own type name: the config must know it
            head = cfg["available_node_types"].pop(cfg["head_node_type"])
            cfg["available_node_types"][FAKE_HEAD_TYPE] = head
            cfg["head_node_type"] = FAKE_HEAD_TYPE
            atomic_write_json(path, cfg)
            del self.rec.data["autoscaling_config_path"]  # nothing rented: nothing for `stop` to release
            return [f"--autoscaling-config={path}"]

        def _autoscaling_env(self) -> dict[str, str]:
            return {**super()._autoscaling_env(), "RAY_FAKE_CLUSTER": "1", "RAY_NODE_TYPE_NAME": FAKE_HEAD_TYPE}

    return RayOwnAutoscalerCluster


def _gpu_nodes_alive() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)


def cluster_part(args, ours: bool) -> dict:
    """(2) ours=True: our provider + the local market; (3) ours=False: Ray's own provider."""
    import ray

    from raycluster.provision.autoscaling import ElasticConfig
    from raycluster.provision.local.cluster import LocalCluster

    label = "(2) ours" if ours else "(3) ray's own"
    state_dir = Path(tempfile.mkdtemp(prefix="rc-bench-scale-"))
    cfg = ElasticConfig(node_types={"gpu_spot": {"market": "local", "kind": "spot", "gpu_type": "T4",
                                                 "max_workers": 1, "resources": {"CPU": 2, "GPU": 1}}},
                        idle_timeout_s=args.idle_s, update_interval_s=args.tick_s)
    cls = LocalCluster if ours else _ray_own_cluster_class()
    lc = cls(state_dir, num_workers=0, head_cpus=1, elastic=cfg)
    lc.start()
    rounds = []
    try:
        lc.connect(log_to_driver=False)

        @ray.remote(num_gpus=1, num_cpus=1)
        def started():
            return time.time()

        for i in range(args.rounds):
            t_submit = time.time()
            t_run = ray.get(started.remote(), timeout=300)
            t_done = time.time()
            # released = Ray no longer has a live GPU node (the same observation for both)
            while _gpu_nodes_alive():
                if time.time() - t_done > 300:
                    raise TimeoutError("the idle node was not released in 300 s")
                time.sleep(0.1)
            t_released = time.time()
            row = {"submit_to_running_s": round(t_run - t_submit, 2),
                   "idle_to_released_s": round(t_released - t_done, 2)}
            log(f"{label} round {i + 1}: {row}")
            rounds.append(row)
    finally:
        ray.shutdown()
        lc.stop()
    return {"autoscaler_tick_s": args.tick_s, "idle_timeout_s": args.idle_s, "rounds": rounds,
            "submit_to_running_s_median": statistics.median(r["submit_to_running_s"] for r in rounds),
            "idle_to_released_s_median": statistics.median(r["idle_to_released_s"] for r in rounds)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tick-s", type=float, default=5.0, help="autoscaler tick (a user's default: 5)")
    ap.add_argument("--idle-s", type=float, default=60.0, help="idle timeout (a user's default: 60)")
    ap.add_argument("--skip-cluster", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "bench_scale.json"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: stop our cluster
    result: dict = {"machine": {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
                    "provider": provider_calls(args.nodes)}
    if not args.skip_cluster:
        result["local_market"] = cluster_part(args, ours=True)
        result["ray_own_autoscaler"] = cluster_part(args, ours=False)
        a, b = result["local_market"], result["ray_own_autoscaler"]
        result["ours_minus_ray_own_s"] = {
            k: round(a[k] - b[k], 2) for k in ("submit_to_running_s_median", "idle_to_released_s_median")}
        result["within_one_tick"] = all(v <= args.tick_s for v in result["ours_minus_ray_own_s"].values())
        # what a `ray start` process pays before it starts anything (Ray's fake provider starts its
        # raylets inside the autoscaler's process and never pays it): the CLI's own import
        import subprocess

        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import ray.scripts.scripts"], check=True)
        result["ray_start_cli_import_s"] = round(time.perf_counter() - t, 2)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
