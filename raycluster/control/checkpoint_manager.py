"""The CheckpointManager actor: a named, detached, restartable shell over the checkpoint registry.

Owns: nothing but the actor boundary — ranks call ``commit_shard`` / ``candidates`` /
``mark_corrupt``, the API and clients call ``list``; all state is in ``store.checkpoints``
(``<state_dir>/checkpoints.db``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import ray

from raycluster.store.checkpoints import CheckpointRegistry
from raycluster.util.histogram import Histogram

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class CheckpointManager:
    def __init__(self, state_dir: str):
        (Path(state_dir) / "checkpoints").mkdir(parents=True, exist_ok=True)
        self._reg = CheckpointRegistry(Path(state_dir) / "checkpoints.db")
        # what a shard's save took (write + register, in the rank's writer thread) and its bytes
        self._save_s = Histogram((0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
        self._bytes = 0

    def ping(self) -> dict:
        return {"ok": True}

    def commit_shard(self, *args, write_s: float | None = None, **kwargs) -> dict[str, Any]:
        out = self._reg.commit_shard(*args, **kwargs)
        if write_s is not None:
            self._save_s.observe(float(write_s))
        size = kwargs.get("size_bytes", args[6] if len(args) > 6 else 0)
        self._bytes += int(size or 0)
        return out

    def metrics_snapshot(self) -> dict[str, Any]:
        """For the MetricsCollector: the save-seconds histogram and bytes written (since this actor started)."""
        return {**self._save_s.snapshot(), "bytes": self._bytes}

    def candidates(self, job_id: str) -> list[dict[str, Any]]:
        return self._reg.candidates(job_id)

    def mark_corrupt(self, job_id: str, step: int, reason: str) -> None:
        log.warning("checkpoint %s step %d marked corrupt: %s", job_id, step, reason)
        self._reg.mark_corrupt(job_id, step, reason)

    def list(self, job_id: str) -> list[dict[str, Any]]:
        return self._reg.list(job_id)
