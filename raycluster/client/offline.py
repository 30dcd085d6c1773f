"""History that outlives the cluster: a job's record, transitions, rank logs and checkpoints read
from the state on disk when no cluster is up.

Owns: ``OfflineClient`` — the read-only calls the CLI's history commands make (``get``, ``list``,
``logs``, ``checkpoints``, ``metrics``), answered from ``<state_dir>/jobs.db``, the rank logs and
``checkpoints.db`` under the storage (the settings' ``STORAGE_URI``, else the state dir), exactly as
the Coordinator answers them from the same files. Imports nothing from Ray; opens the databases
read-write as SQLite WAL readers (a stopped cluster writes nothing).
"""

from __future__ import annotations

from pathlib import Path

from raycluster import constants as C
from raycluster.errors import JobNotFound
from raycluster.store import storage
from raycluster.store.lifecycle import JobState


class OfflineClient:
    offline = True

    def __init__(self, state_dir: Path | str):
        self.state_dir = Path(state_dir).expanduser()
        self.storage_uri = C.STORAGE_URI or str(self.state_dir)

    def _jobs(self):
        from raycluster.store.jobs import JobStore

        if not (self.state_dir / "jobs.db").exists():
            raise JobNotFound(f"no jobs recorded under {self.state_dir}")
        return JobStore(self.state_dir / "jobs.db")

    def get(self, job_id: str) -> dict:
        store = self._jobs()
        out = store.get(job_id).to_dict()  # JobNotFound
        out["transitions"] = store.transitions(job_id)
        return out

    def list(self, states: list[str] | None = None, tenant: str | None = None, limit: int | None = None,
             offset: int = 0, newest_first: bool = False) -> list[dict]:
        if not (self.state_dir / "jobs.db").exists():
            return []
        st = [JobState(s) for s in states] if states else None
        return [r.to_dict() for r in self._jobs().list(st, tenant, limit, offset, newest_first)]

    def logs(self, job_id: str, tail_lines: int = 200, since: dict[str, int] | None = None) -> list[dict]:
        from raycluster.rank.logs import read_rank_logs

        self._jobs().get(job_id)  # JobNotFound
        return read_rank_logs(storage.join(self.storage_uri, "logs"), job_id, tail_lines, since)

    def checkpoints(self, job_id: str) -> list[dict]:
        from raycluster.store.checkpoints import CheckpointRegistry

        self._jobs().get(job_id)
        db = self.state_dir / "checkpoints.db"
        return CheckpointRegistry(db).list(job_id) if db.exists() else []

    def metrics(self, job_id: str, limit: int = 1000) -> list[dict]:
        store = self._jobs()
        store.get(job_id)
        return store.metrics_history(job_id, limit)
