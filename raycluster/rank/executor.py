"""What runs inside one gang member: the Ray task body for one rank of one attempt.

Owns: importing the entrypoint, choosing the device, the torch.distributed rendezvous (rank 0
publishes host:port in Ray's internal KV under a per-attempt key; the others poll it), building
the TrainContext, calling ``train(ctx)``, flushing checkpoints, and reporting *how* the rank
ended as a plain dict so the Coordinator can tell user-code errors from system failures:

    {"rank": r, "status": "ok", "result": <rank 0's return value>}
    {"rank": r, "status": "user_error", "error": <traceback>}      # exception in user code
    {"rank": r, "status": "system_error", "error": <traceback>}    # runtime failure (rendezvous...)

Failures Ray itself reports (worker crashed, node died, OOM-killed) surface as exceptions from
``ray.get`` on the task's ObjectRef and are classified by the Coordinator.

While the rank runs, its Python output is teed into its rank log (``rank/logs.py``).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
import traceback
from datetime import timedelta
from typing import Any, Callable

from raycluster.rank.logs import RankLogCapture, local_spool_path, rank_log_path
from raycluster.util.files import json_safe
from raycluster.util.ports import free_port

log = logging.getLogger(__name__)

_KV_NAMESPACE = "raycluster"


class EntrypointError(Exception):
    pass


def resolve_entrypoint(entrypoint: str) -> Callable:
    """Import 'package.module:function' and return the callable (raises EntrypointError)."""
    module_name, _, fn_name = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, SyntaxError, anything the module raises at import
        raise EntrypointError(f"cannot import module {module_name!r}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise EntrypointError(f"module {module_name!r} has no attribute {fn_name!r}")
    if not callable(fn):
        raise EntrypointError(f"{entrypoint!r} is not callable")
    return fn


def check_entrypoint(entrypoint: str) -> str | None:
    """Task body used at submit time: None if importable, else the reason."""
    try:
        resolve_entrypoint(entrypoint)
    except EntrypointError as exc:
        return str(exc)
    return None


def rendezvous_key(job_id: str, attempt: int) -> bytes:
    return f"rdzv/{job_id}/{attempt}".encode()


def _init_distributed(job_id: str, attempt: int, rank: int, world_size: int, backend: str,
                      timeout_s: float) -> None:
    import ray
    import torch.distributed as dist
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_get, _internal_kv_put

    key = rendezvous_key(job_id, attempt)
    if rank == 0:
        addr = f"{ray.util.get_node_ip_address()}:{free_port()}"
        _internal_kv_put(key, addr.encode(), overwrite=True, namespace=_KV_NAMESPACE)
    else:
        deadline = time.monotonic() + timeout_s
        while True:
            raw = _internal_kv_get(key, namespace=_KV_NAMESPACE)
            if raw:
                addr = raw.decode()
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"rank {rank}: rank 0 did not publish a rendezvous address in {timeout_s:.0f}s")
            time.sleep(0.05)
    dist.init_process_group(backend, init_method=f"tcp://{addr}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))
    if rank == 0:
        _internal_kv_del(key, namespace=_KV_NAMESPACE)


def _log_capture_of(launch: dict[str, Any]) -> RankLogCapture:
    log_dir = launch.get("log_dir")
    if not log_dir:
        return RankLogCapture(None)
    job, attempt, rank = launch["job_id"], launch["attempt"], launch["rank"]
    return RankLogCapture(rank_log_path(log_dir, job, attempt, rank), local_spool_path(job, attempt, rank))


def run_rank(launch: dict[str, Any]) -> dict[str, Any]:
    """Body of one gang member's Ray task. ``launch`` is built by the Coordinator."""
    with _log_capture_of(launch):
        return _run_rank(launch)


def _run_rank(launch: dict[str, Any]) -> dict[str, Any]:
    import ray

    from raycluster import constants as C
    from raycluster.rank.context import TrainContext

    if launch.get("settings") is not None:  # the Coordinator's, in force in this (reused) worker process
        from raycluster.settings import of

        of(launch["settings"]).install()
    rank, world = launch["rank"], launch["world_size"]
    if rank == 0 and launch.get("coordinator") is not None:
        launch["coordinator"].rank_started.remote(launch["job_id"], launch["attempt"], rank)
    out: dict[str, Any] = {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    # 1. user code import: a failure here is the user's.
    try:
        fn = resolve_entrypoint(launch["entrypoint"])
    except EntrypointError as exc:
        return {**out, "status": "user_error", "error": str(exc)}
    # 2. runtime setup: failures here are the system's. torch is only imported if the job uses it.
    try:
        ctx = TrainContext(
            job_id=launch["job_id"], attempt=launch["attempt"], rank=rank, world_size=world,
            config=launch["config"], device=None, gpu_assigned=bool(ray.get_gpu_ids()),
            checkpoint_root=launch["checkpoint_root"],
            checkpoint_policy=launch["checkpoint_policy"], checkpoint_manager=launch.get("checkpoint_manager"),
            coordinator=launch.get("coordinator"), elastic=bool(launch.get("elastic")),
        )
        if launch.get("sweep") is not None:
            return _run_sweep(fn, launch, ctx, out)
        if world > 1:
            backend = "nccl" if ctx.device.type == "cuda" else "gloo"
            _init_distributed(launch["job_id"], launch["attempt"], rank, world, backend, C.RENDEZVOUS_TIMEOUT_S)
    except Exception:
        _destroy_pg()
        return {**out, "status": "system_error", "error": traceback.format_exc()}
    # 3. the user's training function.
    try:
        result = fn(ctx)
    except BaseException:
        err = traceback.format_exc()
        print(f"raycluster: train() of rank {rank} raised:\n{err}", file=sys.stderr, flush=True)
        _destroy_pg()  # close sockets so peers fail fast instead of hanging in a collective
        return {**out, "status": "user_error", "error": err}
    try:
        ctx.flush()
    except Exception:
        _destroy_pg()
        return {**out, "status": "system_error", "error": traceback.format_exc()}
    _destroy_pg()
    return {**out, "status": "ok", "result": json_safe(result) if rank == 0 else None}


def _run_sweep(fn: Callable, launch: dict[str, Any], ctx, out: dict[str, Any]) -> dict[str, Any]:
    """A sweep's bundle: its trials in this process (``rank/sweep.py``), no process group. A trial's
    exception is its own; only a failure to record results fails the bundle (a system error)."""
    import ray

    from raycluster.rank.sweep import TrialContext, run_bundle

    coord = launch.get("coordinator")

    def send(rows: list[dict]) -> None:
        if coord is not None:
            ray.get(coord.trials_done.remote(launch["job_id"], launch["attempt"], rows), timeout=120)

    def make_ctx(trial: int, config: dict) -> TrialContext:
        return TrialContext(job_id=launch["job_id"], attempt=launch["attempt"], trial=trial, config=config,
                            device_of=lambda: ctx.device, checkpoint_root=launch["checkpoint_root"],
                            checkpoint_policy=launch["checkpoint_policy"])

    def claim() -> list:
        if coord is None:
            return []
        return ray.get(coord.sweep_claim.remote(launch["job_id"], launch["attempt"], launch["rank"]), timeout=120)

    try:
        counts = run_bundle(fn, launch["sweep"], make_ctx, send, claim)
    except Exception:
        return {**out, "status": "system_error", "error": traceback.format_exc()}
    return {**out, "status": "ok", "result": counts}


def _destroy_pg() -> None:
    dist = sys.modules.get("torch.distributed")  # never import torch just to find nothing to destroy
    if dist is None:
        return
    try:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # best effort
        pass
