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
    def __init__(self, state_dir: str, settings: dict | None = None):
        from raycluster.settings import of

        of(settings).install()
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


class CheckpointLookup:
    """The Coordinator's one way to ask the CheckpointManager about a job's checkpoints (None
    handle: no manager, as in unit tests with a fake Ray — nothing is ever checkpointed)."""

    def __init__(self, handle: Any = None, timeout_s: float = 30.0):
        self.handle = handle
        self.timeout_s = timeout_s

    def newest(self, job_id: str) -> dict | None:
        """The job's newest complete checkpoint (step, created_at, ...), None if it has none."""
        if self.handle is None:
            return None
        found = ray.get(self.handle.candidates.remote(job_id), timeout=self.timeout_s)
        return found[0] if found else None

    def newest_step(self, job_id: str) -> int | None:
        found = self.newest(job_id)
        return None if found is None else int(found["step"])

    def newest_at(self, job_id: str) -> float | None:
        found = self.newest(job_id)
        return float(found.get("created_at") or 0.0) or None if found else None
