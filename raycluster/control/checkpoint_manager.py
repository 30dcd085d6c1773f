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

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class CheckpointManager:
    def __init__(self, state_dir: str):
        (Path(state_dir) / "checkpoints").mkdir(parents=True, exist_ok=True)
        self._reg = CheckpointRegistry(Path(state_dir) / "checkpoints.db")

    def ping(self) -> dict:
        return {"ok": True}

    def commit_shard(self, *args, **kwargs) -> dict[str, Any]:
        return self._reg.commit_shard(*args, **kwargs)

    def candidates(self, job_id: str) -> list[dict[str, Any]]:
        return self._reg.candidates(job_id)

    def mark_corrupt(self, job_id: str, step: int, reason: str) -> None:
        log.warning("checkpoint %s step %d marked corrupt: %s", job_id, step, reason)
        self._reg.mark_corrupt(job_id, step, reason)

    def list(self, job_id: str) -> list[dict[str, Any]]:
        return self._reg.list(job_id)
