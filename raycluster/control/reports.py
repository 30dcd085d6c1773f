"""The ranks' metric reports, buffered: ``report`` (from any actor thread) appends, ``flush``
(first thing in each loop pass, and before a job's success is recorded) writes them to the job
table in one transaction. Owns only the buffer; a failed write keeps the rows for the next try."""

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

    def report(self, job_id: str, attempt: int, step: int | None, metrics: dict[str, Any]) -> None:
        with self._lock:
            self._rows.append((job_id, attempt, self.clock(), step, metrics))

    def flush(self) -> None:
        with self._lock:
            rows, self._rows = self._rows, []
        if rows:
            try:
                self.store.record_metrics(rows)
            except Exception:
                with self._lock:  # keep them for the next try
                    self._rows = rows + self._rows
                raise
