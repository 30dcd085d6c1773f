#!/usr/bin/env python
"""Core runtime benchmarks, each measured side by side with raw Ray in one run. Writes JSON.

(a) 200 trivial one-worker jobs through the Coordinator vs 200 raw placement-group + task launches
    (same bundle, same cluster): wall time and ratio (target <= 1.5x).
(b) submit -> RUNNING latency (p50/p99) on a warm cluster, one job at a time (target p50 < 0.5 s);
    also submit -> first metric from inside train(), i.e. user code actually executing.
(c) samples/s of the CNN job under the runtime with checkpoints every 50 steps vs the same
    training loop as a bare Ray task on the same resources: ratio (target >= 0.97).

Usage: python scripts/bench_core.py [--jobs 200] [--out bench-results/bench_core.json]
Starts its own local cluster (head + 3 workers) in a temporary state dir and stops it after.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ray  # noqa: E402
from ray.util.placement_group import placement_group, remove_placement_group  # noqa: E402
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # noqa: E402

from benchlib import log, pct, write_result  # noqa: E402
from raycluster.provision.local.cluster import LocalCluster  # noqa: E402
from raycluster.client.ray_client import Client  # noqa: E402
from raycluster.control.actors import start_runtime  # noqa: E402

BUNDLE = {"CPU": 0.5}


@ray.remote(num_cpus=0.5)
def raw_noop():
    return {"rank": 0, "world_size": 1}


def bench_raw(n: int) -> float:
    t0 = time.perf_counter()
    pending = {}
    for _ in range(n):
        pg = placement_group([BUNDLE], strategy="PACK")
        ref = raw_noop.options(scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg)).remote()
        pending[ref] = pg
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            ray.get(ref)
            remove_placement_group(pending.pop(ref))
    return time.perf_counter() - t0


def bench_runtime(client: Client, n: int) -> float:
    t0 = time.perf_counter()
    ids = [client.submit({"name": f"noop-{i}", "entrypoint": "jobs.toy:noop", "resources": {"cpus": 0.5}})["id"]
           for i in range(n)]
    final = client.wait(ids, timeout_s=600, poll_s=0.05)
    elapsed = time.perf_counter() - t0
    bad = [j for j in final if j["state"] != "SUCCEEDED"]
    if bad:
        raise SystemExit(f"{len(bad)} noop jobs did not succeed: {bad[0]['state']} {bad[0]['error']}")
    return elapsed


def bench_latency(client: Client, n: int) -> dict:
    """One job at a time on a warm cluster; each runs to completion (so worker processes are reused,
    as they are for a steady stream of jobs) before the next is submitted."""
    to_running, to_first_metric, failed = [], [], []
    spec = {"name": "lat", "entrypoint": "jobs.toy:counter", "resources": {"cpus": 0.5},
            "config": {"steps": 50, "sleep_per_step_s": 0.01}}
    for _ in range(n):
        t0 = time.perf_counter()
        jid = client.submit(spec)["id"]
        running = first = None
        while first is None or running is None:  # (its code may report before the loop marks it RUNNING)
            job = client.get(jid)
            now = time.perf_counter()
            if running is None and job["state"] in ("RUNNING", "SUCCEEDED"):
                running = now - t0
            if first is None and (job["last_metrics"].get("step") or job["state"] == "SUCCEEDED"):
                first = now - t0
            if job["state"] in ("FAILED", "CANCELLED"):  # never ran (or not to the end): counted apart
                failed.append(f"{jid} {job['state']}: {job['error']}")
                break
            time.sleep(0.002)
        if first is None or running is None:
            continue
        to_running.append(running)
        to_first_metric.append(first)
        client.wait([jid], timeout_s=60, poll_s=0.05)
    return {"n": n, "ran": len(to_running), "failed": failed,
            "submit_to_running_p50_s": pct(to_running, 50), "submit_to_running_p99_s": pct(to_running, 99),
            "submit_to_first_metric_p50_s": pct(to_first_metric, 50),
            "submit_to_first_metric_p99_s": pct(to_first_metric, 99)}


@ray.remote(max_retries=0)
def bare_cnn(config: dict) -> dict:
    import torch

    from jobs.cnn import train
    from raycluster.rank.context import BareContext

    cuda = bool(ray.get_gpu_ids()) and torch.cuda.is_available()
    return train(BareContext(config, device=torch.device("cuda", 0) if cuda else torch.device("cpu")))


def bench_cnn(client: Client, steps: int, repeats: int) -> dict:
    config = {"steps": steps, "batch_size": 32, "seed": 0}
    res = {"CPU": 1.0, "GPU": 1.0}
    runtime_sps, bare_sps = [], []
    for _ in range(repeats):
        pg = placement_group([res])
        ray.get(pg.ready())
        out = ray.get(bare_cnn.options(num_cpus=1, num_gpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg)).remote(config))
        remove_placement_group(pg)
        bare_sps.append(out["samples_per_s"])
        jid = client.submit({"name": "cnn-bench", "entrypoint": "jobs.cnn:train", "config": config,
                             "resources": {"cpus": 1, "gpus": 1}, "checkpoint": {"every_steps": 50, "keep_last": 2}})["id"]
        job = client.wait([jid], timeout_s=900)[0]
        if job["state"] != "SUCCEEDED":
            raise SystemExit(f"cnn job failed: {job['error']}")
        runtime_sps.append(job["result"]["samples_per_s"])
    r, b = statistics.median(runtime_sps), statistics.median(bare_sps)
    return {"steps": steps, "repeats": repeats, "checkpoint_every_steps": 50, "runtime_samples_per_s": r,
            "bare_ray_task_samples_per_s": b, "ratio": r / b, "runtime_runs": runtime_sps, "bare_runs": bare_sps,
            "note": "runs alternate bare/runtime on the same cluster; ratio of the medians"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--latency-samples", type=int, default=30)
    ap.add_argument("--cnn-steps", type=int, default=1000)
    ap.add_argument("--parts", default="abc", help="which benchmarks to run (subset of 'abc')")
    ap.add_argument("--cnn-repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "bench_core.json"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below: stop our cluster
    state_dir = Path(tempfile.mkdtemp(prefix="rc-bench-"))
    lc = LocalCluster(state_dir, num_workers=3, cpus_per_worker=2, gpus_per_worker=1)
    lc.start()
    try:
        lc.connect(namespace="raycluster", log_to_driver=False)
        client = Client(start_runtime(state_dir))
        bench_runtime(client, 10), bench_raw(10)  # warm both paths (worker processes, imports)
        result = {"machine": {"cpus": os.cpu_count(), "ray": ray.__version__},
                  # every figure at the defaults a user gets unless the environment set a knob
                  "settings": {k: v for k, v in os.environ.items() if k.startswith("RAYCLUSTER_")} or "defaults"}
        if "a" in args.parts:
            log("(a) raw placement group + task launches")
            raw_s = bench_raw(args.jobs)
            log(f"    {raw_s:.2f}s; (a) the same through the Coordinator")
            rt_s = bench_runtime(client, args.jobs)
            log(f"    {rt_s:.2f}s")
            result["a_trivial_jobs"] = {"n": args.jobs, "runtime_s": rt_s, "raw_ray_s": raw_s, "ratio": rt_s / raw_s,
                                        "target_ratio_max": 1.5}
        if "b" in args.parts:
            log("(b) latency")
            result["b_latency"] = {**bench_latency(client, args.latency_samples), "target_p50_s": 0.5}
        if "c" in args.parts:
            log("(c) CNN throughput")
            result["c_cnn_throughput"] = {**bench_cnn(client, args.cnn_steps, args.cnn_repeats),
                                          "target_ratio_min": 0.97}
    finally:
        ray.shutdown()
        lc.stop()
    write_result(result, args.out)


if __name__ == "__main__":
    main()
