"""The checkpoint registry (``checkpoints.db``, SQLite WAL).

Owns: which checkpoints exist per job, their shards (one file per rank), sha256 and state
(PARTIAL -> COMPLETE -> PRUNED, or CORRUPT), and pruning the shard files of dropped checkpoints.

Data never flows through here: each training rank writes its own shard (``rank/context.py``,
atomically) and then registers path + sha256. A checkpoint becomes COMPLETE when every rank of the
gang has registered its shard; only then may it be restored from, and only then are older ones
pruned to ``keep_last`` (their files deleted wherever they live: a path or a storage URI,
``store/storage.py``). Restore (done by the ranks) walks COMPLETE checkpoints newest first,
verifies every shard's sha256 and falls back to the previous one when a file is missing or corrupt.
The CheckpointManager actor (``control/checkpoint_manager.py``) is a thin shell over this class.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from raycluster.store import storage
from raycluster.store.db import connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    world_size INTEGER NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    completed_at REAL,
    reason TEXT,
    PRIMARY KEY (job_id, step)
);
CREATE TABLE IF NOT EXISTS shards (
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    PRIMARY KEY (job_id, step, rank)
);
"""


# ------------------------------------------------------------------------------- registry
class CheckpointRegistry:
    """The checkpoint table. Plain class (unit-testable); the actor below is a thin shell."""

    def __init__(self, db_path: Path):
        self._conn = connect(Path(db_path))
        self._conn.executescript(_SCHEMA)
        self._lock = threading.RLock()

    def commit_shard(self, job_id: str, step: int, rank: int, world_size: int, path: str, sha256: str,
                     size_bytes: int, attempt: int, keep_last: int, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                row = c.execute("SELECT state, world_size FROM checkpoints WHERE job_id=? AND step=?",
                                (job_id, step)).fetchone()
                if row is None or row[0] in ("PRUNED", "CORRUPT") or row[1] != world_size:
                    # (re)start this checkpoint: a new attempt may rewrite a step an older one left broken
                    c.execute("DELETE FROM shards WHERE job_id=? AND step=?", (job_id, step))
                    c.execute(
                        "INSERT OR REPLACE INTO checkpoints (job_id, step, attempt, world_size, state, created_at)"
                        " VALUES (?,?,?,?, 'PARTIAL', ?)", (job_id, step, attempt, world_size, now))
                c.execute("INSERT OR REPLACE INTO shards (job_id, step, rank, path, sha256, size_bytes)"
                          " VALUES (?,?,?,?,?,?)", (job_id, step, rank, path, sha256, size_bytes))
                n = c.execute("SELECT COUNT(*) FROM shards WHERE job_id=? AND step=?", (job_id, step)).fetchone()[0]
                complete = n >= world_size
                if complete:
                    c.execute("UPDATE checkpoints SET state='COMPLETE', completed_at=?, attempt=? "
                              "WHERE job_id=? AND step=?", (now, attempt, job_id, step))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        pruned = self.prune(job_id, keep_last) if complete else []
        return {"complete": complete, "pruned": pruned}

    def prune(self, job_id: str, keep_last: int) -> list[int]:
        """Keep the newest ``keep_last`` COMPLETE checkpoints; drop older ones and stale partials."""
        with self._lock:
            steps = [r[0] for r in self._conn.execute(
                "SELECT step FROM checkpoints WHERE job_id=? AND state='COMPLETE' ORDER BY step DESC", (job_id,))]
            if not steps:
                return []
            drop = steps[keep_last:]
            newest = steps[0]
            drop += [r[0] for r in self._conn.execute(
                "SELECT step FROM checkpoints WHERE job_id=? AND state IN ('PARTIAL','CORRUPT') AND step<?",
                (job_id, newest))]
            dirs = []
            for step in drop:
                for (p,) in self._conn.execute("SELECT path FROM shards WHERE job_id=? AND step=?", (job_id, step)):
                    dirs.append(storage.parent(p))
                self._conn.execute("UPDATE checkpoints SET state='PRUNED' WHERE job_id=? AND step=?", (job_id, step))
                self._conn.execute("DELETE FROM shards WHERE job_id=? AND step=?", (job_id, step))
        for d in set(dirs):
            storage.remove_tree(d)
        return sorted(drop)

    def candidates(self, job_id: str) -> list[dict[str, Any]]:
        """COMPLETE checkpoints, newest first, with their shards: what a restore may use."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT step, world_size, attempt, created_at FROM checkpoints WHERE job_id=? AND state='COMPLETE' "
                "ORDER BY step DESC", (job_id,)).fetchall()
            out = []
            for step, world, attempt, created_at in rows:
                shards = {r: {"path": p, "sha256": s, "size_bytes": b} for r, p, s, b in self._conn.execute(
                    "SELECT rank, path, sha256, size_bytes FROM shards WHERE job_id=? AND step=?", (job_id, step))}
                out.append({"step": step, "world_size": world, "attempt": attempt, "created_at": created_at,
                            "shards": shards})
        return out

    def mark_corrupt(self, job_id: str, step: int, reason: str) -> None:
        with self._lock:
            self._conn.execute("UPDATE checkpoints SET state='CORRUPT', reason=? WHERE job_id=? AND step=?",
                               (reason, job_id, step))

    def list(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT c.step, c.attempt, c.world_size, c.state, c.created_at, c.completed_at, c.reason, "
                "COALESCE(SUM(s.size_bytes), 0) FROM checkpoints c LEFT JOIN shards s "
                "ON s.job_id=c.job_id AND s.step=c.step WHERE c.job_id=? GROUP BY c.step ORDER BY c.step",
                (job_id,)).fetchall()
        keys = ("step", "attempt", "world_size", "state", "created_at", "completed_at", "reason", "size_bytes")
        return [dict(zip(keys, r)) for r in rows]
