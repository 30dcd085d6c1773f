"""The ``ctx`` object handed to a user's ``train(ctx)``.

Importing this module does not import torch or numpy: a rank whose user code does not use them
never pays for them (RNG states of numpy/torch are captured only when the job has imported them).

Owns: what a training rank sees of the runtime — rank/world/config/device, metric reports, the
checkpoint policy, checkpoint layout and save (serialised in the caller, written in a background thread,
registered with the CheckpointManager) and restore (verify sha256 of every shard, newest first,
fall back to the previous checkpoint when one is corrupt). RNG state of python ``random``,
numpy and torch (CPU and CUDA) is saved with every shard and restored with it, per rank.
"""

from __future__ import annotations

import hashlib
import io
import logging
import queue
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from raycluster import constants as C
from raycluster.errors import CheckpointError
from raycluster.store import storage

log = logging.getLogger(__name__)


def shard_path(root: Path | str, job_id: str, step: int, rank: int) -> str:
    """Where rank ``rank`` of ``job_id`` keeps its shard of the checkpoint at ``step`` (a path or a
    storage URI, as ``root`` is)."""
    return storage.join(root, job_id, f"step_{step:09d}", f"rank_{rank}.pt")


def capture_rng() -> dict[str, Any]:
    """RNG states of python ``random`` and, when the job uses them, numpy and torch (CPU + CUDA)."""
    out: dict[str, Any] = {"python": random.getstate()}
    np = sys.modules.get("numpy")
    if np is not None:
        out["numpy"] = np.random.get_state()
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])
    if "torch" in state:
        import torch

        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class _ShardWriter:
    """One background thread per rank: write atomically (file: fsync + rename; object store: one
    PUT) + register, in order."""

    def __init__(self, commit):
        self._commit = commit
        self._q: queue.Queue = queue.Queue(maxsize=max(1, C.CHECKPOINT_WRITE_QUEUE))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ckpt-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            path, data, step = item
            try:
                t0 = time.perf_counter()
                storage.write_bytes(path, data)
                self._commit(step, str(path), hashlib.sha256(data).hexdigest(), len(data), time.perf_counter() - t0)
            except BaseException as exc:  # surfaced on the next save/flush
                log.exception("checkpoint write of step %d failed", step)
                self._error = exc

    def submit(self, path: str, data: bytes, step: int) -> None:
        self.raise_if_failed()
        self._q.put((path, data, step))  # blocks only when CHECKPOINT_WRITE_QUEUE writes are pending

    def flush(self) -> None:
        self._q.put(None)
        self._thread.join()
        self.raise_if_failed()

    def raise_if_failed(self) -> None:
        if self._error is not None:
            raise CheckpointError(f"background checkpoint write failed: {self._error}")


class TrainContext:
    """What ``train(ctx)`` gets. Created by the runtime for each rank of each attempt."""

    def __init__(self, *, job_id: str, attempt: int, rank: int, world_size: int, config: dict,
                 device: Any = None, gpu_assigned: bool = False, checkpoint_root: str | None,
                 checkpoint_policy: dict, checkpoint_manager=None, coordinator=None, elastic: bool = False):
        self.job_id = job_id
        self.attempt = attempt
        self.rank = rank
        self.world_size = world_size
        self.config = dict(config)
        self._device = device  # None = decide on first use (torch is imported only then)
        self._gpu_assigned = gpu_assigned
        self._root = str(checkpoint_root) if checkpoint_root else None
        self._policy = checkpoint_policy or {}
        self._cm = checkpoint_manager
        self._coord = coordinator
        self._writer: _ShardWriter | None = None
        self._last_ckpt_time = time.monotonic()
        self._ask_ref = None  # rank 0: the Coordinator's answer to "checkpoint now?", in flight
        self._asked_at = time.monotonic()
        self.restored_step: int | None = None
        # an elastic gang (num_workers: {min, max}) may resume from a checkpoint of another size
        self.elastic = elastic
        self.restored_world_size: int | None = None  # the world size the restored checkpoint was saved at

    @property
    def device(self):
        """The torch.device this rank trains on: CUDA when Ray assigned it a real GPU, else CPU."""
        import torch

        if self._device is None:
            use_cuda = self._gpu_assigned and torch.cuda.is_available()
            if use_cuda:  # Ray narrowed CUDA_VISIBLE_DEVICES to this rank's GPU(s)
                torch.cuda.set_device(0)
            self._device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
        elif not isinstance(self._device, torch.device):
            self._device = torch.device(self._device)
        return self._device

    # ------------------------------------------------------------------ metrics
    def report(self, **metrics: Any) -> None:
        """Send metrics (numbers) to the control plane; rank 0's are recorded. Never blocks training."""
        if self.rank != 0 or self._coord is None:
            return
        step = metrics.pop("step", None)
        clean = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                 for k, v in metrics.items()}
        self._coord.report.remote(self.job_id, self.attempt, step, clean)

    # ------------------------------------------------------------------ checkpoint policy
    def should_checkpoint(self, step: int) -> bool:
        """True when the job's checkpoint policy says to save at ``step``, or when the control plane
        asked for a checkpoint now (its node is about to be given back: shed, preempted). Every rank
        gets the same answer (rank 0 decides what is not a function of ``step`` and tells the others),
        so every rank must call it at every step it trains."""
        if self._cm is None:
            return False
        every_steps = self._policy.get("every_steps")
        if every_steps and step > 0 and step % every_steps == 0:
            return True
        every_s = self._policy.get("every_s")
        multi = self.world_size > 1
        if multi and not every_s and step % C.CHECKPOINT_ASK_EVERY_STEPS != 0:
            return False  # (the ranks agree only every few steps when no time policy needs it each step)
        due = False
        if self.rank == 0:
            due = bool(every_s) and time.monotonic() - self._last_ckpt_time >= every_s
            due = self._asked() or due
        if multi:
            import torch
            import torch.distributed as dist

            flag = torch.tensor([1 if due else 0], dtype=torch.int32,
                                device=self.device if self.device.type == "cuda" else "cpu")
            dist.broadcast(flag, src=0)
            due = bool(flag.item())
        return due

    def _asked(self) -> bool:
        """(rank 0) Whether the Coordinator asked for a checkpoint now; never blocks: the question
        is sent every CHECKPOINT_ASK_INTERVAL_S and its answer read when it has come."""
        if self._coord is None:
            return False
        import ray

        if self._ask_ref is not None:
            ready, _ = ray.wait([self._ask_ref], timeout=0)
            if not ready:
                return False
            ref, self._ask_ref = self._ask_ref, None
            try:
                if ray.get(ref):
                    return True
            except Exception:  # the Coordinator restarting: ask again later
                pass
        if time.monotonic() - self._asked_at >= C.CHECKPOINT_ASK_INTERVAL_S:
            self._asked_at = time.monotonic()
            self._ask_ref = self._coord.checkpoint_wanted.remote(self.job_id, self.attempt)
        return False

    # ------------------------------------------------------------------ save / restore
    def save_checkpoint(self, state: dict[str, Any], step: int) -> None:
        """Snapshot ``state`` (+ this rank's RNG) now; write and register it in the background.

        Every rank of the gang must call this at the same ``step``: the checkpoint is usable only
        once all ranks' shards are registered.
        """
        if self._cm is None or self._root is None:
            return
        import torch

        buf = io.BytesIO()
        torch.save({"step": step, "rank": self.rank, "world_size": self.world_size, "state": state,
                    "rng": capture_rng()}, buf)
        if self._writer is None:
            self._writer = _ShardWriter(self._commit)
        self._writer.submit(shard_path(self._root, self.job_id, step, self.rank), buf.getvalue(), step)
        self._last_ckpt_time = time.monotonic()

    def _commit(self, step: int, path: str, digest: str, size: int, write_s: float | None = None) -> None:
        import ray

        ray.get(self._cm.commit_shard.remote(
            self.job_id, step, self.rank, self.world_size, path, digest, size, self.attempt,
            int(self._policy.get("keep_last", 3)), write_s=write_s))

    def restore(self) -> dict[str, Any] | None:
        """This rank's state from the newest checkpoint whose every shard verifies (RNGs restored).

        Returns None when the job has no usable checkpoint (fresh start). All ranks reach the same
        answer because each verifies the same shards in the same order.

        An elastic gang resumes from a checkpoint saved at another world size too
        (``restored_world_size`` says which): rank ``r`` reads shard ``r`` when there was one, else
        shard 0 (the ranks of a data-parallel gang hold the same model), and restores that shard's
        RNG only when it is its own. Its data position must then be global — ``ctx.sampler`` — so
        no sample is skipped or seen twice.
        """
        if self._cm is None:
            return None
        import ray

        for cand in ray.get(self._cm.candidates.remote(self.job_id)):
            step = cand["step"]
            if cand["world_size"] != self.world_size and not self.elastic:
                log.warning("skipping checkpoint step %d: world size %d != %d", step, cand["world_size"],
                            self.world_size)
                continue
            bad = [r for r, s in sorted(cand["shards"].items()) if storage.sha256(s["path"]) != s["sha256"]]
            if bad:
                reason = f"shard(s) {bad} missing or sha256 mismatch"
                log.warning("checkpoint %s step %d unusable: %s; trying the previous one", self.job_id, step, reason)
                if self.rank == 0:
                    self._cm.mark_corrupt.remote(self.job_id, step, reason)
                continue
            own = self.rank in cand["shards"]
            shard = cand["shards"][self.rank if own else 0]
            import torch

            payload = torch.load(io.BytesIO(storage.read_bytes(shard["path"])), map_location="cpu",
                                 weights_only=False)
            if own:
                restore_rng(payload["rng"])
            self.restored_step = step
            self.restored_world_size = cand["world_size"]
            self._last_ckpt_time = time.monotonic()
            return payload["state"]
        return None

    def sampler(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        """A ``GlobalSampler`` over ``num_samples`` sample ids for this rank: the gang's position in
        the data is one global count, so a job resumed at another world size (an elastic gang) sees
        every sample exactly once. Save ``sampler.state_dict()`` in the checkpoint state and
        ``load_state_dict`` it after ``restore()``."""
        from raycluster.rank.data import GlobalSampler

        return GlobalSampler(num_samples, rank=self.rank, world_size=self.world_size, seed=seed, shuffle=shuffle)

    def flush(self) -> None:
        """Wait for pending checkpoint writes (the runtime calls this when train() returns)."""
        if self._writer is not None:
            self._writer.flush()
            self._writer = None


class BareContext(TrainContext):
    """A ctx with no control plane: no checkpoints, no reports. For benchmarks and local debugging."""

    def __init__(self, config: dict | None = None, rank: int = 0, world_size: int = 1, device: Any = "cpu"):
        super().__init__(job_id="bare", attempt=0, rank=rank, world_size=world_size, config=config or {},
                         device=device, checkpoint_root=None, checkpoint_policy={})

