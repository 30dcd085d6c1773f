"""Scheduled jobs (``jobs.db``, table ``schedules``): a cron expression and the spec each run is made of.

Owns: ``ScheduleRecord`` (one schedule: the run spec, cron, concurrency policy, paused, the next tick,
the last run and counters) and ``ScheduleStore``. A run is an ordinary job with ``schedule_id`` set and
the idempotency key ``<schedule id>@<tick>``, so a Coordinator killed between submitting a run and
recording the tick submits it once, not twice.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from raycluster.errors import IllegalTransition, JobNotFound
from raycluster.store.db import Table, connect


class ScheduleRecord(BaseModel):
    id: str = Field(..., json_schema_extra={"sql": "PRIMARY KEY"})
    name: str
    spec: dict[str, Any] = Field(..., description="the spec each run is submitted with (no schedule field)")
    cron: str
    concurrency_policy: str
    tenant: str | None = None
    paused: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    next_run_at: float = Field(0.0, description="the next tick (UTC epoch seconds)")
    last_tick_at: float | None = None
    last_job_id: str | None = Field(None, description="the newest run")
    runs: int = Field(0, description="runs submitted")
    skipped: int = Field(0, description="ticks skipped (Forbid, the previous run unfinished)")
    last_error: str | None = Field(None, description="why the last tick could not submit its run")
    deleted: bool = False
    idempotency_key: str | None = Field(None, json_schema_extra={"sql": "UNIQUE"},
                                        description="a retried create answers the schedule it made")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


SCHEDULES = Table("schedules", ScheduleRecord)


def new_schedule_id() -> str:
    return "sched-" + uuid.uuid4().hex[:12]


class ScheduleStore:
    def __init__(self, path: Path | str):
        self._conn = connect(Path(path))
        self._lock = threading.RLock()
        with self._lock:
            SCHEDULES.create(self._conn)

    def insert(self, rec: ScheduleRecord) -> ScheduleRecord:
        row = SCHEDULES.encode(rec.__dict__)
        with self._lock:
            self._conn.execute(f"INSERT INTO schedules ({', '.join(row)}) VALUES ({','.join('?' * len(row))})",
                               tuple(row.values()))
        return rec

    def get(self, schedule_id: str, include_deleted: bool = False) -> ScheduleRecord:
        with self._lock:
            row = self._conn.execute(f"SELECT {SCHEDULES.select_list} FROM schedules WHERE id=?"
                                     + ("" if include_deleted else " AND deleted=0"), (schedule_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"schedule {schedule_id!r} not found")
        return SCHEDULES.row(row)

    def find_by_key(self, key: str) -> ScheduleRecord | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {SCHEDULES.select_list} FROM schedules WHERE idempotency_key=?",
                                     (key,)).fetchone()
        return SCHEDULES.row(row) if row else None

    def list(self) -> list[ScheduleRecord]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {SCHEDULES.select_list} FROM schedules WHERE deleted=0 "
                                      "ORDER BY created_at, id").fetchall()
        return [SCHEDULES.row(r) for r in rows]

    def update(self, schedule_id: str, expect_next_run_at: float | None = None, **fields: Any) -> ScheduleRecord:
        """Set ``fields``; with ``expect_next_run_at``, only if the tick is still that one (a stale
        writer cannot record a tick twice)."""
        sets = SCHEDULES.encode(fields)
        where, args = "id=? AND deleted=0", [schedule_id]
        if expect_next_run_at is not None:
            where += " AND next_run_at=?"
            args.append(expect_next_run_at)
        with self._lock:
            cur = self._conn.execute(f"UPDATE schedules SET {', '.join(f'{k}=?' for k in sets)} WHERE {where}",
                                     (*sets.values(), *args))
            if cur.rowcount != 1:
                self.get(schedule_id)  # JobNotFound
                raise IllegalTransition(f"schedule {schedule_id} changed meanwhile")
        return self.get(schedule_id, include_deleted=True)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

