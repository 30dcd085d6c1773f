#!/usr/bin/env python
"""HTTP control API benchmark (raycluster/api/ behind Ray Serve). Writes JSON.

(1) GET /cluster/status and (2) GET /jobs/{id}: ``--requests`` requests each from
    ``--concurrency`` concurrent keep-alive clients (asyncio + aiohttp): req/s, p50/p99/max latency,
    non-200 count. Targets: >= 500 req/s and p99 < 100 ms for /cluster/status.
    The CPU milliseconds each process on the request path spent per request are recorded too.
    The API is served by its replica directly (Ray Serve direct ingress, the default); (1) is also
    measured through Serve's proxy — the same app, one hop longer — side by side in the same run.
(3) a burst of ``--burst`` POST /jobs (``jobs.toy:noop``), each with its own Idempotency-Key, from
    the same number of concurrent clients: accepted/s; then checks that none was lost (every id is in
    GET /jobs) or duplicated (as many distinct ids as keys, one job per key), and that re-POSTing
    ``--replays`` of the keys returns the same ids.

Usage: python scripts/bench_api.py [--requests 2000] [--concurrency 32] [--burst 500]
       [--node-env KEY=VALUE ...] [--out bench-results/bench_api.json]
Starts its own local cluster (head + 2 workers) in a temporary state dir, deploys the API on a
free port, and stops everything after. The client runs on the same machine as the cluster, so on a
small machine it competes with the API replica for the same cores (reported in "machine").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import ray  # noqa: E402

from benchlib import log, pct, start_runtime_and_api, stop_cluster, write_result  # noqa: E402
from raycluster.provision.local.cluster import LocalCluster  # noqa: E402

NOOP = {"entrypoint": "jobs.toy:noop", "resources": {"cpus": 0.5}}


async def load(url: str, headers: dict, n: int, concurrency: int, make_request) -> dict:
    """``n`` requests from ``concurrency`` workers sharing one connection pool; latency per request."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    bodies: list = []
    counter = iter(range(n))
    conn = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, headers=headers, connector=conn, timeout=timeout) as session:
        async def worker():
            for i in counter:
                t0 = time.perf_counter()
                async with make_request(session, i) as resp:
                    body = await resp.read()
                latencies.append(time.perf_counter() - t0)
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                bodies.append((i, resp.status, body))

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        elapsed = time.perf_counter() - t0
    return {"requests": n, "concurrency": concurrency, "elapsed_s": round(elapsed, 3),
            "req_per_s": round(n / elapsed, 1), "p50_ms": round(pct(latencies, 50) * 1e3, 2),
            "p99_ms": round(pct(latencies, 99) * 1e3, 2), "max_ms": round(max(latencies) * 1e3, 2),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "_bodies": bodies}


ROLES = {"serve_proxy": "ray::ProxyActor", "api_replica": "ray::ServeReplica:raycluster-api",
         "coordinator": "ray::Coordinator", "checkpoint_manager": "ray::CheckpointManager"}


def cpu_snapshot() -> dict:
    """CPU seconds so far of the processes on the request path (by Ray's process titles) and of us."""
    import psutil

    out = {"bench_client": sum(psutil.Process().cpu_times()[:2])}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            title = " ".join(proc.info["cmdline"] or [])
            for role, prefix in ROLES.items():
                if title.startswith(prefix):
                    out[role] = out.get(role, 0.0) + sum(proc.cpu_times()[:2])
        except (psutil.Error, OSError):
            continue
    return out


def cpu_ms_per_request(before: dict, after: dict, n: int) -> dict:
    return {k: round((after[k] - before.get(k, 0.0)) / n * 1e3, 3) for k in after}


def measured(url, headers, n, concurrency, make_request) -> dict:
    before = cpu_snapshot()
    r = asyncio.run(load(url, headers, n, concurrency, make_request))
    r["cpu_ms_per_request"] = cpu_ms_per_request(before, cpu_snapshot(), n)
    return r


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def all_jobs(url: str, headers: dict) -> list[dict]:
    import requests

    out, offset = [], 0
    while True:
        page = requests.get(f"{url}/jobs", params={"limit": 1000, "offset": offset}, headers=headers,
                            timeout=120).json()
        out += page["jobs"]
        if page["next_offset"] is None:
            return out
        offset = page["next_offset"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--replays", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--node-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for every node (repeatable), e.g. to try Ray Serve's RAY_SERVE_* "
                         "settings; RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0, RAY_SERVE_RUN_ROUTER_IN_"
                         "SEPARATE_LOOP=0, RAY_SERVE_USE_GRPC_BY_DEFAULT=1 made no measurable difference here")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "bench_api.json"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below: stop our cluster
    state_dir = Path(tempfile.mkdtemp(prefix="rc-bench-api-"))
    env = dict(kv.split("=", 1) for kv in args.node_env)
    lc = LocalCluster(state_dir, num_workers=args.workers, cpus_per_worker=2, gpus_per_worker=1, env=env)
    lc.start()
    result: dict = {"machine": {"cpus": os.cpu_count(), "ray": ray.__version__,
                                "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
                    "cluster": {"workers": args.workers, "node_env": env}}
    try:
        info, url, headers = start_runtime_and_api(lc, state_dir)
        import requests

        jid = requests.post(f"{url}/jobs", json={"name": "bench-target", **NOOP}, headers=headers,
                            timeout=120).json()["id"]
        status = lambda s, i: s.get("/cluster/status")  # noqa: E731
        get_job = lambda s, i: s.get(f"/jobs/{jid}")  # noqa: E731
        asyncio.run(load(url, headers, 300, args.concurrency, status))  # warm-up (connections, caches)
        asyncio.run(load(url, headers, 300, args.concurrency, get_job))

        log(f"(1) GET /cluster/status x{args.requests}, {args.concurrency} concurrent")
        r = measured(url, headers, args.requests, args.concurrency, status)
        result["cluster_status"] = {**strip(r), "url": url, "direct_ingress": info["direct_ingress"],
                                    "target_req_per_s": 500, "target_p99_ms": 100}
        log(f"    {r['req_per_s']} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['statuses']}, "
            f"CPU ms/request {r['cpu_ms_per_request']}")

        if info.get("proxy_url"):
            log(f"(1') the same through Serve's proxy ({info['proxy_url']})")
            asyncio.run(load(info["proxy_url"], headers, 300, args.concurrency, status))
            p = measured(info["proxy_url"], headers, args.requests, args.concurrency, status)
            result["cluster_status_via_serve_proxy"] = strip(p)
            result["cluster_status"]["req_per_s_vs_serve_proxy"] = round(r["req_per_s"] / p["req_per_s"], 2)
            log(f"    {p['req_per_s']} req/s, p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms, {p['statuses']}, "
                f"CPU ms/request {p['cpu_ms_per_request']}")

        log(f"(2) GET /jobs/{{id}} x{args.requests}, {args.concurrency} concurrent")
        r = measured(url, headers, args.requests, args.concurrency, get_job)
        result["get_job"] = strip(r)
        log(f"    {r['req_per_s']} req/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['statuses']}, "
            f"CPU ms/request {r['cpu_ms_per_request']}")

        log(f"(3) burst of {args.burst} POST /jobs, {args.concurrency} concurrent")
        run_id = uuid.uuid4().hex[:8]
        keys = [f"bench-{run_id}-{i}" for i in range(args.burst)]
        post = lambda s, i: s.post("/jobs", json={"name": f"burst-{i}", **NOOP},  # noqa: E731
                                   headers={"Idempotency-Key": keys[i]})
        r = measured(url, headers, args.burst, args.concurrency, post)
        ids = {i: json.loads(body)["id"] for i, st, body in r["_bodies"] if st == 201}
        log(f"    {r['req_per_s']} accepted/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, {r['statuses']}")

        replay_idx = list(range(0, args.burst, max(1, args.burst // args.replays)))[:args.replays]
        rp = asyncio.run(load(url, headers, len(replay_idx), args.concurrency,
                              lambda s, j: post(s, replay_idx[j])))
        replay_ids = {replay_idx[j]: json.loads(body).get("id") for j, st, body in rp["_bodies"]}
        listed = all_jobs(url, headers)
        mine = [j for j in listed if (j.get("idempotency_key") or "").startswith(f"bench-{run_id}-")]
        listed_ids = {j["id"] for j in listed}
        check = {
            "accepted": len(ids),
            "distinct_ids": len(set(ids.values())),
            "all_listed": all(i in listed_ids for i in ids.values()),
            "jobs_with_burst_keys": len(mine),
            "one_job_per_key": len({j["idempotency_key"] for j in mine}) == len(mine) == args.burst,
            "replays": len(replay_idx),
            "replays_same_id": sum(replay_ids.get(i) == ids.get(i) for i in replay_idx),
            "replay_statuses": rp["statuses"],
        }
        check["ok"] = (check["accepted"] == check["distinct_ids"] == check["jobs_with_burst_keys"] == args.burst
                       and check["all_listed"] and check["one_job_per_key"]
                       and check["replays_same_id"] == len(replay_idx))
        result["submit_burst"] = {**strip(r), "accepted_per_s": r["req_per_s"], "check": check}
        log(f"    lost/duplicated check: {check}")
    finally:
        stop_cluster(lc)
    write_result(result, args.out)
    if not result.get("submit_burst", {}).get("check", {}).get("ok"):
        sys.exit(1)


if __name__ == "__main__":
    main()
