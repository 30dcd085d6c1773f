#!/usr/bin/env python
"""CLI latency benchmark: what a user waits for per command, start-up included. Writes JSON.

Brings a cluster up the way the README does (`raycluster up --local`, its defaults: 3 workers, the
HTTP API on its default port), submits one job, then runs each of `jobs`, `status`, `status JOB`,
`nodes` (rented nodes: none on this fixed cluster, said with exit 3), `health` ``--repeats`` times as its own process, two ways side by side in the same run:

* ``http`` — as a user types it: the CLI finds the API recorded by `up` and talks HTTP;
* ``ray`` — the same command with ``--address`` of the Ray cluster: a Ray driver per call (how every
  call went before the API was found by default).

Reports p50/p95/max seconds per command and way, and how many Ray drivers (jobs of type DRIVER in
Ray's job table) each way added. Target: p50 < 0.5 s over HTTP, no driver added.
Usage: python scripts/bench_cli.py [--repeats 10] [--out bench-results/bench_cli.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import log, pct, write_result  # noqa: E402

COMMANDS = (("jobs",), ("status",), ("status", "{job}"), ("nodes",), ("health",))


def rc(env, *args, check=True, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "raycluster.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"raycluster {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def drivers(address: str, state_dir: Path) -> int:
    """Ray's DRIVER jobs so far (asked in a process of its own, which adds one: subtracted)."""
    code = ("import sys, ray; from pathlib import Path; from raycluster.client.ray_client import connect; "
            "connect(sys.argv[1], Path(sys.argv[2])); from ray.util.state import list_jobs; "
            "print(sum(1 for j in list_jobs(limit=10000) if str(j.type).endswith('DRIVER')))")
    out = subprocess.run([sys.executable, "-c", code, address, str(state_dir)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    return int(out.stdout.strip().splitlines()[-1]) - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "bench_cli.json"))
    args = ap.parse_args()
    state = Path(tempfile.mkdtemp(prefix="rc-bench-cli-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAYCLUSTER_") and k != "RAY_ADDRESS"}
    # (not a tuning knob: a private state dir, so the bench never touches the user's ~/.raycluster;
    # every RAYCLUSTER_* setting is left at its default)
    env["RAYCLUSTER_STATE_DIR"] = str(state)
    log(f"raycluster up --local (state dir {state}) ...")
    t0 = time.monotonic()
    up = json.loads(rc(env, "--json", "up", "--local").stdout)
    result = {"machine": {"cpus": os.cpu_count()}, "up_s": round(time.monotonic() - t0, 1),
              "settings": "raycluster up --local defaults (3 workers, API on its default port)",
              "repeats": args.repeats, "commands": {}}
    try:
        spec = state / "noop.json"
        spec.write_text(json.dumps({"name": "bench-noop", "entrypoint": "jobs.toy:noop",
                                    "resources": {"cpus": 0.5, "gpus": 0}}))
        job = rc(env, "submit", str(spec)).stdout.strip()
        ways = {"http": [], "ray": ["--address", up["address"]]}
        before = {}
        for way, extra in ways.items():
            before[way] = drivers(up["address"], state)
            for cmd in COMMANDS:
                argv = [a.format(job=job) for a in cmd]
                times = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    # (`nodes` lists rented nodes: on this fixed cluster it says there are none, exit 3)
                    rc(env, *extra, *argv, check=cmd != ("nodes",))
                    times.append(time.perf_counter() - t)
                row = result["commands"].setdefault(" ".join(cmd), {})
                row[way] = {"p50_s": round(pct(times, 50), 3), "p95_s": round(pct(times, 95), 3),
                            "max_s": round(max(times), 3)}
                log(f"{way:4s} {' '.join(argv):28s} p50 {row[way]['p50_s']:.3f} s")
            # (the count before was taken by a driver of its own, still in the table: one less)
            result.setdefault("ray_drivers_added", {})[way] = drivers(up["address"], state) - before[way] - 1
        http_p50 = [r["http"]["p50_s"] for r in result["commands"].values()]
        result["http_p50_max_s"] = max(http_p50)
        result["target"] = "p50 < 0.5 s per command over HTTP (start-up included), no Ray driver per call"
        result["met"] = result["http_p50_max_s"] < 0.5 and result["ray_drivers_added"]["http"] == 0
    finally:
        rc(env, "down", check=False)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
