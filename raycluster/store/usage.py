"""Which rented nodes each attempt of each job held, and its share of each (``jobs.db``, table
``usage``): the per-job side of the cost ledger. The rentals' side (interval × price) is the
provider's ``rentals.db``; ``policy/cost.py`` joins the two.

Owns: one row per (job, attempt, rented node) — the share of the node the attempt's bundles took
(their GPUs over the node's GPUs; CPUs for a node without GPUs) from the moment the gang was placed
to the moment the attempt ended (NULL while it runs). Nodes that are not rented (the head, fixed
local workers) cost nothing and are not recorded.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from raycluster.store.db import connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    job_id TEXT NOT NULL, attempt INTEGER NOT NULL, rental_id TEXT NOT NULL, node_id TEXT NOT NULL,
    share REAL NOT NULL, start REAL NOT NULL, end REAL,
    PRIMARY KEY (job_id, attempt, rental_id));
CREATE INDEX IF NOT EXISTS usage_open ON usage(end);
"""


class UsageStore:
    def __init__(self, path: Path | str):
        self._conn = connect(Path(path))
        self._lock = threading.Lock()
        with self._lock:
            self._conn.executescript(_SCHEMA)

    def placed(self, job_id: str, attempt: int, shares: dict[str, tuple[str, float]], now: float) -> None:
        """The attempt's gang is placed: ``shares`` is rental id -> (Ray node id, share of the node)."""
        with self._lock:
            self._conn.executemany(
                "INSERT OR IGNORE INTO usage (job_id, attempt, rental_id, node_id, share, start) VALUES (?,?,?,?,?,?)",
                [(job_id, attempt, rid, nid, share, now) for rid, (nid, share) in shares.items()])

    def ended(self, job_id: str, attempt: int, now: float) -> None:
        with self._lock:
            self._conn.execute("UPDATE usage SET end=? WHERE job_id=? AND attempt=? AND end IS NULL",
                               (now, job_id, attempt))

    def rentals_of(self, job_id: str, attempt: int) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute(
                "SELECT rental_id FROM usage WHERE job_id=? AND attempt=?", (job_id, attempt))]

    def open_on(self, rental_id: str) -> list[tuple[str, int]]:
        """(job, attempt) of every attempt holding a share of ``rental_id`` now."""
        with self._lock:
            return [(r[0], int(r[1])) for r in self._conn.execute(
                "SELECT DISTINCT job_id, attempt FROM usage WHERE rental_id=? AND end IS NULL", (rental_id,))]

    def rows(self, job_ids: list[str] | None = None) -> list[dict[str, Any]]:
        sql = "SELECT job_id, attempt, rental_id, share, start, end FROM usage"
        args: tuple = ()
        if job_ids is not None:
            if not job_ids:
                return []
            sql += f" WHERE job_id IN ({', '.join('?' for _ in job_ids)})"
            args = tuple(job_ids)
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        keys = ("job_id", "attempt", "rental_id", "share", "start", "end")
        return [dict(zip(keys, r)) for r in rows]

    def rows_with_tenant(self, since: float) -> list[dict[str, Any]]:
        """The rows still open or ended at or after ``since``, each with its job's tenant (the
        ``jobs`` table of the same database; None for a job with none)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT u.job_id, u.attempt, u.rental_id, u.share, u.start, u.end, j.tenant FROM usage u "
                "LEFT JOIN jobs j ON j.id = u.job_id WHERE u.end IS NULL OR u.end >= ?", (since,)).fetchall()
        keys = ("job_id", "attempt", "rental_id", "share", "start", "end", "tenant")
        return [dict(zip(keys, r)) for r in rows]

    def close(self) -> None:
        self._conn.close()
