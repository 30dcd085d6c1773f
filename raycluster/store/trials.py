"""A sweep's trial results (``jobs.db``, table ``trials``): one row per finished trial.

Owns: recording finished trials (the first result of a trial wins: a trial recorded as finished is
never run again nor overwritten, whatever attempt runs the sweep next), which trials of a job are
finished, reading them page by page, and the sweep's summary (counts and the best trial by the
spec's ``trials.metric`` / ``mode``).
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

from raycluster.store.db import connect

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    job_id TEXT NOT NULL,
    trial INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    config TEXT NOT NULL,
    result TEXT,
    error TEXT,
    duration_s REAL,
    finished_at REAL NOT NULL,
    PRIMARY KEY (job_id, trial)
);
"""


class TrialStore:
    def __init__(self, path: Path | str):
        self._conn = connect(Path(path))
        self._lock = threading.Lock()
        with self._lock:
            self._conn.executescript(_SCHEMA)

    def record(self, job_id: str, attempt: int, rows: list[dict[str, Any]], now: float) -> int:
        """Record finished trials (``{trial, ok, config, result|error, duration_s}``); a trial already
        recorded keeps its first result. Returns how many were new."""
        with self._lock:
            before = self._conn.total_changes
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR IGNORE INTO trials (job_id, trial, attempt, ok, config, result, error, duration_s, "
                    "finished_at) VALUES (?,?,?,?,?,?,?,?,?)",
                    [(job_id, int(r["trial"]), attempt, 1 if r.get("ok") else 0, json.dumps(r.get("config", {})),
                      json.dumps(r.get("result")), r.get("error"), r.get("duration_s"), now) for r in rows])
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            return self._conn.total_changes - before

    def done(self, job_id: str) -> set[int]:
        with self._lock:
            return {t for (t,) in self._conn.execute("SELECT trial FROM trials WHERE job_id=?", (job_id,))}

    def durations(self, job_id: str) -> tuple[float, int]:
        """(total run time, count) of the job's recorded trials that say how long they ran."""
        with self._lock:
            total, n = self._conn.execute("SELECT COALESCE(SUM(duration_s), 0), COUNT(duration_s) FROM trials "
                                          "WHERE job_id=?", (job_id,)).fetchone()
        return float(total), int(n)

    def list(self, job_id: str, limit: int = 1000, offset: int = 0, failed_only: bool = False) -> list[dict[str, Any]]:
        q = "SELECT trial, attempt, ok, config, result, error, duration_s, finished_at FROM trials WHERE job_id=?"
        if failed_only:
            q += " AND ok=0"
        with self._lock:
            rows = self._conn.execute(q + " ORDER BY trial LIMIT ? OFFSET ?", (job_id, limit, offset)).fetchall()
        return [{"trial": t, "attempt": a, "ok": bool(ok), "config": json.loads(c),
                 "result": json.loads(r) if r is not None else None, "error": e, "duration_s": d, "finished_at": f}
                for t, a, ok, c, r, e, d, f in rows]

    def summary(self, job_id: str, total: int, metric: str | None, mode: str = "min") -> dict[str, Any]:
        """Counts, and the best finished trial by ``metric`` (a number in its result) under ``mode``."""
        with self._lock:
            ok, failed = self._conn.execute(
                "SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(1 - ok), 0) FROM trials WHERE job_id=?", (job_id,)).fetchone()
            rows = self._conn.execute("SELECT trial, config, result FROM trials WHERE job_id=? AND ok=1",
                                      (job_id,)).fetchall() if metric else []
        best = None
        for trial, config, result in rows:
            value = (json.loads(result) or {}).get(metric) if result else None
            if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
                continue
            if best is None or (value < best["value"] if mode == "min" else value > best["value"]):
                best = {"trial": trial, "config": json.loads(config), "metric": metric, "value": value}
        return {"trials": total, "succeeded": int(ok), "failed": int(failed), "unfinished": total - int(ok) - int(failed),
                "best": best}

    def close(self) -> None:
        with self._lock:
            self._conn.close()
