"""The ranks' metric reports, buffered: ``report`` (from any actor thread) appends, ``flush``
(first thing in each loop pass, and before a job's success is recorded) writes them to the job
table in one transaction. Owns the buffer and the newest (attempt, step) written per job: the
Coordinator's actor threads deliver one rank's reports out of order, so a batch is put in step order
and a report older than one already written goes to the history only, never back into the job's
``last_metrics`` (a job held at step 20 showed 19). A failed write keeps the rows for the next try."""

from __future__ import annotations

import threading
from typing import Any, Callable

from raycluster.store.jobs import JobStore


class Reports:
    def __init__(self, store: JobStore, clock: Callable[[], float]):
        self.store = store
        self.clock = clock
        self._rows: list[tuple] = []
        self._lock = threading.Lock()
        self._newest: dict[str, tuple[int, int]] = {}  # job id -> newest (attempt, step) in last_metrics

    def report(self, job_id: str, attempt: int, step: int | None, metrics: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append((job_id, attempt, self.clock(), step, metrics))

    def flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
        if not rows:
            return
        rows.sort(key=lambda r: (r[0], r[1], -1 if r[3] is None else r[3]))
        fresh = [r for r in rows if r[3] is None or (r[1], r[3]) >= self._newest.get(r[0], (r[1], -1))]
        try:
            self.store.record_metrics(rows, merge=fresh)
        except Exception:
            with self._lock:  # keep them for the next try
                self._rows = rows + self._rows
            raise
        for jid, attempt, _ts, step, _m in fresh:
            if step is not None:
                self._newest[jid] = max(self._newest.get(jid, (attempt, step)), (attempt, step))
