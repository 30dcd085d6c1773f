#!/usr/bin/env python
"""Admission decision-pass benchmark: the runtime's policy vs the straightforward reference, side by
side in one run, on the same random queues and clusters. Writes JSON.

Queues of gangs of 1/2/4/8 one-GPU bundles (PACK / SPREAD / STRICT_SPREAD, three priorities),
nodes with 8 CPUs and 0-2 free GPUs. Figures: milliseconds per ``decide_admission`` pass (median of
``--repeats``) at 1k jobs x 32 nodes, 10k x 100 and 10k x 1,000; both must admit the same jobs.

Usage: python scripts/bench_queue.py [--repeats 5] [--out bench-results/bench_queue.json]
(The Coordinator tick and submission-throughput parts of issue 12 are not measured here yet.)
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import log, write_result  # noqa: E402
from raycluster.policy import admission as fast  # noqa: E402
from tests.unit import admission_reference as ref  # noqa: E402

SIZES = ((1000, 32), (10_000, 100), (10_000, 1000))


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


def timed(module, ctx, repeats: int) -> tuple[float, object]:
    times, decision = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        decision = module.decide_admission(ctx, 1200.0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, decision


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "bench_queue.json"))
    args = ap.parse_args()
    out = {"decision_pass": []}
    for jobs, nodes in SIZES:
        f_ms, f_dec = timed(fast, workload(fast, jobs, nodes), args.repeats)
        r_ms, r_dec = timed(ref, workload(ref, jobs, nodes), max(1, min(args.repeats, 3)))
        same = (f_dec.admit, f_dec.reserved_for, f_dec.waiting) == (r_dec.admit, r_dec.reserved_for, r_dec.waiting)
        row = {"jobs": jobs, "nodes": nodes, "runtime_ms": round(f_ms, 2), "reference_ms": round(r_ms, 2),
               "speedup": round(r_ms / f_ms, 1), "admitted": len(f_dec.admit), "same_decision": same}
        log(f"{jobs} jobs x {nodes} nodes: {f_ms:.1f} ms vs reference {r_ms:.1f} ms ({r_ms / f_ms:.1f}x), "
            f"{len(f_dec.admit)} admitted, same decision: {same}")
        out["decision_pass"].append(row)
        if not same:
            log("DIFFERENT DECISIONS")
            return 1
    out["target_ms_at_10k_x_1000"] = 10.0
    write_result(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
