#!/usr/bin/env python
"""Queue at scale benchmark (issue "Queue at scale"). Writes JSON.

(1) Decision pass, pure Python, the runtime's policy vs the straightforward reference
    (tests/unit/admission_reference.py) side by side on the same random queues and clusters: queues
    of gangs of 1/2/4/8 one-GPU bundles (PACK / SPREAD / STRICT_SPREAD, three priorities), nodes
    with 8 CPUs and 0-2 free GPUs, at 1k jobs x 32 nodes, 10k x 100 and 10k x 1,000. Milliseconds
    per pass (median of ``--repeats``) for:
      * ``cold_ms``     — ``decide_admission`` from scratch (sorts the queue);
      * ``runtime_ms``  — what the Coordinator runs when something changed: ``AdmissionQueue.decide``
                          with the queue order kept across passes;
      * ``full_ms``     — the same on a cluster with no GPU free (a submit while it is full);
      * ``skipped_ms``  — the same when nothing changed (the pass is skipped);
      * ``reference_ms``— the reference. Both must make the same decision.
(2) Coordinator tick on a real local cluster: the Coordinator actor's CPU (ms per second, from its
    process's CPU times over ``--idle-s``) with an empty queue vs with ``--jobs`` x 2 jobs queued
    (nothing changing: a long-running job holds the only GPU); goal <= 1.5x.
(3) Submission throughput, ``--jobs`` jobs each way: the Python client one call per job
    (``--threads`` threads) and in batches (``submit_many``, ``--batch`` a call); the HTTP API one
    POST per job (``--concurrency`` clients, each with its own Idempotency-Key) and in batches
    (``POST /jobs/batch``): accepted/s (goal >= 200), then none lost (every id listed), none
    duplicated (one job per key), and replayed keys answer the same ids. Then a page of ``GET /jobs``, of the
    Python client's ``list`` and of ``raycluster jobs`` (the CLI, a fresh process) at the start,
    middle and end of the table (goal < 100 ms a page for the API).

Usage: python scripts/bench_queue.py [--repeats 5] [--jobs 10000] [--skip-cluster]
       [--out bench-results/bench_queue.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import log, start_runtime_and_api, stop_cluster, write_result  # noqa: E402
from raycluster.policy import admission as fast  # noqa: E402
from tests.unit import admission_reference as ref  # noqa: E402

SIZES = ((1000, 32), (10_000, 100), (10_000, 1000))
NOW = 1200.0


def workload(module, jobs: int, nodes: int, seed: int = 0):
    rnd = random.Random(seed)
    queue = []
    for i in range(jobs):
        width = rnd.choice([1, 2, 4, 8])
        queue.append(module.QueuedJob(f"j{i}", rnd.choice([10, 50, 90]), float(rnd.randint(0, 1000)),
                                      tuple({"CPU": 1.0, "GPU": 1.0} for _ in range(width)),
                                      rnd.choice(["PACK", "SPREAD", "STRICT_SPREAD"])))
    free = {f"n{i:04d}": {"CPU": 8.0, "GPU": float(rnd.randint(0, 2))} for i in range(nodes)}
    return module.AdmissionContext(tuple(queue), free, 300.0, 600.0)


def median_ms(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, out


def decision_passes(repeats: int) -> list[dict]:
    rows = []
    for jobs, nodes in SIZES:
        ctx = workload(fast, jobs, nodes)
        cold_ms, cold = median_ms(lambda: fast.decide_admission(ctx, NOW), repeats)
        q = fast.AdmissionQueue(ctx.starvation_threshold_s, ctx.aging_s)
        for j in ctx.queue:
            q.put(j)

        def changed():
            q.forget()  # as after a change: a full pass over the kept order
            return q.decide(ctx.free_by_node, NOW)

        run_ms, run = median_ms(changed, repeats)
        # something changed (e.g. a job was submitted) but no GPU is free: a pass that admits nothing
        full = {n: {**r, "GPU": 0.0} for n, r in ctx.free_by_node.items()}

        def full_pass():
            q.forget()
            return q.decide(full, NOW)

        full_ms, _ = median_ms(full_pass, repeats)
        # nothing changed since the last pass (one that admitted nothing)
        q.decide(full, NOW)
        skip_ms, skipped = median_ms(lambda: q.decide(full, NOW), repeats)
        rctx = workload(ref, jobs, nodes)
        ref_ms, want = median_ms(lambda: ref.decide_admission(rctx, NOW), max(1, min(repeats, 3)))
        same = all((d.admit, d.reserved_for, d.waiting) == (want.admit, want.reserved_for, want.waiting)
                   for d in (cold, run)) and skipped is None
        row = {"jobs": jobs, "nodes": nodes, "runtime_ms": round(run_ms, 2), "cold_ms": round(cold_ms, 2),
               "full_ms": round(full_ms, 3), "skipped_ms": round(skip_ms, 3), "reference_ms": round(ref_ms, 2),
               "speedup_vs_reference": round(ref_ms / run_ms, 1), "admitted": len(run.admit),
               "same_decision": same}
        log(f"{jobs} jobs x {nodes} nodes: kept order {run_ms:.1f} ms, cold {cold_ms:.1f} ms, nothing fits "
            f"{full_ms:.2f} ms, skipped "
            f"{skip_ms:.3f} ms; reference {ref_ms:.1f} ms ({ref_ms / run_ms:.1f}x); {len(run.admit)} admitted, "
            f"same decision: {same}")
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------- cluster
BLOCKER = {"name": "blocker", "entrypoint": "jobs.toy:counter", "config": {"steps": 100000, "sleep_per_step_s": 1.0},
           "resources": {"gpus": 1, "cpus": 1}, "priority": 100}
QUEUED = {"entrypoint": "jobs.toy:noop", "resources": {"gpus": 1, "cpus": 0.5}}


def cpu_ms_per_s(pid: int, window_s: float) -> float:
    import psutil

    p = psutil.Process(pid)
    c0, t0 = sum(p.cpu_times()[:2]), time.monotonic()
    time.sleep(window_s)
    return round((sum(p.cpu_times()[:2]) - c0) / (time.monotonic() - t0) * 1000, 2)


def page_ms(fn, offsets, repeats: int = 5) -> dict:
    return {str(o): round(median_ms(lambda: fn(o), repeats)[0], 2) for o in offsets}


def cluster_part(args, result: dict) -> bool:
    import requests

    from bench_api import all_jobs, load
    from raycluster.client.ray_client import Client
    from raycluster.provision.local.cluster import LocalCluster

    state_dir = Path(tempfile.mkdtemp(prefix="rc-bench-queue-"))
    lc = LocalCluster(state_dir, num_workers=1, cpus_per_worker=2, gpus_per_worker=1, gpu_mode="logical")
    lc.start()
    ok = False
    try:
        info, url, headers = start_runtime_and_api(lc, state_dir)
        client = Client()
        pid = client._call("ping")["pid"]
        blocker = client.submit(BLOCKER)["id"]
        _wait_state(client, blocker, "RUNNING")
        time.sleep(2)
        tick = {"empty_queue_cpu_ms_per_s": cpu_ms_per_s(pid, args.idle_s)}
        log(f"(2) Coordinator CPU, one job running, empty queue: {tick['empty_queue_cpu_ms_per_s']} ms/s")

        run_id = uuid.uuid4().hex[:8]
        from raycluster.client.http_client import HttpClient

        http = HttpClient(url, headers["Authorization"].split()[1])
        ways, ids, keys = {}, {}, {}

        def spec_of(way, i):
            return {"name": f"{way}-{i}", **QUEUED}

        def timed_way(way, submit_all):
            keys[way] = [f"{way}-{run_id}-{i}" for i in range(args.jobs)]
            t0 = time.perf_counter()
            ids[way], extra = submit_all(way)
            dt = time.perf_counter() - t0
            ways[way] = {"elapsed_s": round(dt, 2), "accepted_per_s": round(args.jobs / dt, 1), **extra}
            log(f"    {way}: {args.jobs / dt:.0f} accepted/s {extra}")

        def py_single(way):
            with ThreadPoolExecutor(args.threads) as pool:
                return list(pool.map(lambda i: client.submit(spec_of(way, i), keys[way][i])["id"],
                                     range(args.jobs))), {"threads": args.threads}

        def py_batch(way):
            jobs = client.submit_many([spec_of(way, i) for i in range(args.jobs)], keys[way], batch_size=args.batch)
            return [j["id"] for j in jobs], {"batch_size": args.batch}

        def http_single(way):
            post = lambda s, i: s.post("/jobs", json=spec_of(way, i),  # noqa: E731
                                       headers={"Idempotency-Key": keys[way][i]})
            r = asyncio.run(load(url, headers, args.jobs, args.concurrency, post))
            got = dict((i, json.loads(body)["id"]) for i, st, body in r["_bodies"] if st == 201)
            return [got.get(i) for i in range(args.jobs)], {
                "concurrency": args.concurrency, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                "statuses": r["statuses"]}

        def http_batch(way):
            jobs = http.submit_many([spec_of(way, i) for i in range(args.jobs)], keys[way], batch_size=args.batch)
            return [j["id"] for j in jobs], {"batch_size": args.batch}

        log(f"(3) {args.jobs} submits each way: Python client (one call each, {args.threads} threads; batches), "
            f"HTTP (one POST each with an Idempotency-Key, {args.concurrency} concurrent; POST /jobs/batch)")
        for way, fn in (("python", py_single), ("python_batch", py_batch), ("http", http_single),
                        ("http_batch", http_batch)):
            timed_way(way, fn)
        replay_idx = list(range(0, args.jobs, max(1, args.jobs // 50)))
        replays_ok = sum(client.submit(spec_of("python", i), keys["python"][i])["id"] == ids["python"][i]
                         for i in replay_idx)
        replays_ok += sum(http.submit(spec_of("http", i), keys["http"][i])["id"] == ids["http"][i]
                          for i in replay_idx)
        for way in ("python_batch", "http_batch"):
            again = http.submit_many([spec_of(way, i) for i in replay_idx], [keys[way][i] for i in replay_idx])
            replays_ok += sum(j["id"] == ids[way][i] for j, i in zip(again, replay_idx))
        listed = all_jobs(url, headers)
        by_key: dict[str, list[str]] = {}
        for j in listed:
            by_key.setdefault(j.get("idempotency_key") or "", []).append(j["id"])
        listed_ids = {j["id"] for j in listed}
        check = {way: {"accepted": sum(i is not None for i in ids[way]), "distinct": len(set(ids[way]) - {None}),
                       "all_listed": listed_ids >= set(ids[way]),
                       "one_job_per_key": all(by_key.get(k) == [ids[way][i]] for i, k in enumerate(keys[way]))}
                 for way in ways}
        check["replays"], check["replays_same_id"] = 4 * len(replay_idx), replays_ok
        check["ok"] = (all(c["distinct"] == args.jobs and c["all_listed"] and c["one_job_per_key"]
                           for w, c in check.items() if w in ways) and replays_ok == check["replays"])
        result["submit"] = {"jobs_each": args.jobs, **ways, "target_accepted_per_s": 200, "check": check}
        log(f"    lost/duplicated check: {check}")

        total = len(listed)
        time.sleep(3)  # let the loop settle: waiting reasons written once
        tick["queued_jobs"] = client.cluster_status()["jobs_by_state"]["PENDING"]
        tick["queued_cpu_ms_per_s"] = cpu_ms_per_s(pid, args.idle_s)
        tick["ratio"] = round(tick["queued_cpu_ms_per_s"] / max(tick["empty_queue_cpu_ms_per_s"], 1e-3), 2)
        tick["target_ratio"] = 1.5
        result["tick"] = tick
        log(f"(2) Coordinator CPU, {tick['queued_jobs']} queued, nothing changing: {tick['queued_cpu_ms_per_s']} "
            f"ms/s ({tick['ratio']}x the empty queue)")

        offsets = [0, total // 2, max(0, total - 100)]
        sess = requests.Session()
        pages = {
            "http_get_jobs_ms": page_ms(lambda o: sess.get(f"{url}/jobs", params={"limit": 100, "offset": o},
                                                           headers=headers, timeout=60).raise_for_status(), offsets),
            "python_client_list_ms": page_ms(lambda o: client.list(limit=100, offset=o), offsets),
        }
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cli = [sys.executable, "-m", "raycluster.cli", "--address", url, "--token-file", info["token_path"], "jobs",
               "--limit", "100", "--offset"]
        pages["cli_jobs_page_s_incl_startup"] = {
            str(o): round(median_ms(lambda: subprocess.run(cli + [str(o)], env=env, check=True,
                                                           capture_output=True), 3)[0] / 1000, 2)
            for o in offsets}
        pages["jobs_in_table"], pages["target_ms"] = total, 100
        result["pages"] = pages
        log(f"    pages of 100 at offsets {offsets} of {total}: {pages}")
        client.cancel(blocker)
        ok = check["ok"]
    finally:
        stop_cluster(lc)
    return ok


def _wait_state(client, job_id: str, state: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get(job_id)["state"] != state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job_id} not {state} after {timeout_s:.0f}s")
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=10_000, help="jobs submitted through each way in")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--batch", type=int, default=500, help="jobs per batch submit")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--skip-cluster", action="store_true", help="only the pure decision-pass part")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "bench_queue.json"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally: stop our cluster
    result: dict = {"machine": {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}}
    log("(1) decision pass")
    result["decision_pass"] = passes = decision_passes(args.repeats)
    result["decision_pass_target_ms_at_10k_x_1000"] = 10.0
    ok = all(r["same_decision"] for r in passes)
    if not args.skip_cluster:
        ok = cluster_part(args, result) and ok
    write_result(result, args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
