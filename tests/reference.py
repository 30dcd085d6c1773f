"""Reference results for the "identical result" tests, computed on this machine without Ray, once.

A test that disturbs a job (kills its node, preempts it, moves it) checks that the job ends exactly
as an undisturbed run would. That undisturbed run need not run on the cluster first: the jobs are
deterministic on CPU (``jobs/common.py``: seeds, thread count and algorithms are the job's), so
``reference_result`` runs the job's ``train(ctx)`` in ``world_size`` fresh processes here — a
``BareContext`` each (no checkpoints, no reports), a gloo process group over loopback when there are
several — and returns rank 0's result, as the runtime does. The pacing (sleep between steps, a hold
at a step) changes no result and is dropped. Results are kept in a file under pytest's base temp
directory shared by the xdist workers (under a lock), so each distinct (entrypoint, config, world
size) is computed once per session.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

# (change no result: dropped from the run and from the key)
PACING_KEYS = ("sleep_per_step_s", "hold_at_step", "hold_until_file")


def _rank(entrypoint: str, config: dict, rank: int, world_size: int, port: int, out) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # as Ray sets it for a rank of 1 CPU or less
    import torch.distributed as dist

    from raycluster.rank.context import BareContext
    from raycluster.rank.executor import resolve_entrypoint

    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        result = resolve_entrypoint(entrypoint)(BareContext(config, rank=rank, world_size=world_size))
    finally:
        if world_size > 1:
            dist.destroy_process_group()
    if rank == 0:
        out.put(json.loads(json.dumps(result)))


def compute(entrypoint: str, config: dict, world_size: int = 1, timeout_s: float = 300) -> dict[str, Any]:
    """Run the job's ranks in fresh processes here (``config`` as given: paced if it says so); rank 0's result."""
    from raycluster.util.ports import free_port

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port("127.0.0.1")
    procs = [ctx.Process(target=_rank, args=(entrypoint, config, r, world_size, port, out), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    try:
        result = out.get(timeout=timeout_s)
        for p in procs:
            p.join(timeout=60)
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
        return result
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()


class References:
    """The session's reference results: ``refs(entrypoint, config, world_size)`` → the result;
    ``refs.start(...)`` → a Future, computed in the background while the test's job runs."""

    def __init__(self, cache_dir: Path):
        from concurrent.futures import ThreadPoolExecutor

        self.cache_dir = cache_dir
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference")

    def __call__(self, entrypoint: str, config: dict, world_size: int = 1) -> dict[str, Any]:
        return reference_result(self.cache_dir, entrypoint, config, world_size)

    def start(self, entrypoint: str, config: dict, world_size: int = 1):
        return self._pool.submit(self, entrypoint, config, world_size)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def reference_result(cache_dir: Path, entrypoint: str, config: dict, world_size: int = 1) -> dict[str, Any]:
    """``compute``'s result, computed once per session for all xdist workers (``cache_dir``: shared)."""
    config = {k: v for k, v in config.items() if k not in PACING_KEYS}
    key = json.dumps([entrypoint, config, world_size], sort_keys=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / "reference-results.json"
    with open(cache_dir / "reference-results.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # (another worker computing the same one: wait for it)
        known = json.loads(path.read_text()) if path.exists() else {}
        if key not in known:
            known[key] = compute(entrypoint, config, world_size)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(known))
            tmp.replace(path)
        return known[key]
