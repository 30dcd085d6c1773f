"""Job lifecycle states and the durable job store (SQLite, WAL).

Owns: the ``JobState`` enum and its legal transitions, and ``JobStore`` — the only code that
reads or writes ``jobs.db``. Every transition is a conditional update (``WHERE state=?``) so a
stale writer (e.g. a Coordinator restarted mid-step) cannot overwrite a newer state, and every
transition is appended to the ``transitions`` audit table in the same transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

from raycluster.errors import IllegalTransition, JobNotFound


class JobState(str, Enum):
    PENDING = "PENDING"
    PLACING = "PLACING"
    RUNNING = "RUNNING"
    RECOVERING = "RECOVERING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.PLACING, JobState.RUNNING, JobState.RECOVERING})

LEGAL_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.PLACING, JobState.CANCELLED, JobState.FAILED}),
    # PLACING -> PENDING: placement timed out, give the capacity back and queue again.
    JobState.PLACING: frozenset({JobState.RUNNING, JobState.PENDING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.RECOVERING}
    ),
    # RECOVERING -> PLACING: the gang is torn down and placed again from the latest checkpoint.
    JobState.RECOVERING: frozenset({JobState.PLACING, JobState.CANCELLED, JobState.FAILED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def is_legal(src: JobState, dst: JobState) -> bool:
    return dst in LEGAL_TRANSITIONS[src]


@dataclass
class JobRecord:
    id: str
    name: str
    spec: dict[str, Any]
    priority: int
    tenant: str | None
    state: JobState
    attempt: int = 0
    system_restarts: int = 0
    user_retries: int = 0
    submitted_at: float = 0.0
    started_at: float | None = None  # first RUNNING
    attempt_started_at: float | None = None  # current attempt RUNNING
    finished_at: float | None = None
    updated_at: float = 0.0
    queued_at: float = 0.0  # when it was queued, for FIFO and aging (kept across re-queues)
    error: str | None = None
    reason: str | None = None
    result: Any = None
    last_metrics: dict[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["state"] = self.state.value
        return d


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    priority INTEGER NOT NULL,
    tenant TEXT,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    system_restarts INTEGER NOT NULL DEFAULT 0,
    user_retries INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL NOT NULL,
    started_at REAL,
    attempt_started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    error TEXT,
    reason TEXT,
    result TEXT,
    last_metrics TEXT,
    idempotency_key TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS transitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    src TEXT,
    dst TEXT NOT NULL,
    ts REAL NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions(job_id);
CREATE TABLE IF NOT EXISTS metrics (
    job_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    ts REAL NOT NULL,
    step INTEGER,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_job ON metrics(job_id, ts);
"""

_COLUMNS = (
    "id, name, spec, priority, tenant, state, attempt, system_restarts, user_retries, submitted_at, "
    "started_at, attempt_started_at, finished_at, updated_at, queued_at, error, reason, result, "
    "last_metrics, idempotency_key"
)


def connect(path: Path) -> sqlite3.Connection:
    """Open a SQLite database in WAL mode (durable across process kills, readers never block)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:12]


class JobStore:
    """Durable job table. Thread-safe; one instance per process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn = connect(self.path)
        self._lock = threading.RLock()
        with self._lock:
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ----------------------------------------------------------------- reads
    def _row(self, row: tuple) -> JobRecord:
        (jid, name, spec, prio, tenant, state, attempt, srest, uret, sub, started, astarted, fin, upd,
         queued, error, reason, result, metrics, ikey) = row
        return JobRecord(
            id=jid, name=name, spec=json.loads(spec), priority=prio, tenant=tenant, state=JobState(state),
            attempt=attempt, system_restarts=srest, user_retries=uret, submitted_at=sub, started_at=started,
            attempt_started_at=astarted, finished_at=fin, updated_at=upd, queued_at=queued, error=error,
            reason=reason, result=json.loads(result) if result else None,
            last_metrics=json.loads(metrics) if metrics else {}, idempotency_key=ikey,
        )

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"job {job_id!r} not found")
        return self._row(row)

    def find_by_idempotency_key(self, key: str) -> JobRecord | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key=?", (key,)).fetchone()
        return self._row(row) if row else None

    def list(
        self,
        states: Iterable[JobState] | None = None,
        tenant: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[JobRecord]:
        sql = f"SELECT {_COLUMNS} FROM jobs"
        where, args = [], []
        if states is not None:
            states = list(states)
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(s.value for s in states)
        if tenant is not None:
            where.append("tenant=?")
            args.append(tenant)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY submitted_at, id"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args.extend([limit, offset])
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [self._row(r) for r in rows]

    def transitions(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT src, dst, ts, reason FROM transitions WHERE job_id=? ORDER BY seq", (job_id,)
            ).fetchall()
        return [{"from": s, "to": d, "ts": ts, "reason": r} for s, d, ts, r in rows]

    def metrics_history(self, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT attempt, ts, step, data FROM metrics WHERE job_id=? ORDER BY ts DESC LIMIT ?",
                (job_id, limit),
            ).fetchall()
        return [{"attempt": a, "ts": ts, "step": st, **json.loads(d)} for a, ts, st, d in reversed(rows)]

    def count(self, state: JobState) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM jobs WHERE state=?", (state.value,)).fetchone()[0]

    # ----------------------------------------------------------------- writes
    def insert(
        self, *, name: str, spec: dict, priority: int, tenant: str | None, idempotency_key: str | None = None,
        now: float | None = None,
    ) -> JobRecord:
        now = time.time() if now is None else now
        jid = new_job_id()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO jobs (id, name, spec, priority, tenant, state, submitted_at, updated_at, queued_at,"
                    " idempotency_key) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (jid, name, json.dumps(spec), priority, tenant, JobState.PENDING.value, now, now, now,
                     idempotency_key),
                )
                self._conn.execute(
                    "INSERT INTO transitions (job_id, src, dst, ts, reason) VALUES (?,?,?,?,?)",
                    (jid, None, JobState.PENDING.value, now, "submitted"),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return self.get(jid)

    def transition(
        self, job_id: str, src: JobState, dst: JobState, *, reason: str | None = None, now: float | None = None,
        **fields: Any,
    ) -> JobRecord:
        """Move ``job_id`` from ``src`` to ``dst`` iff it is still in ``src``; set extra ``fields``.

        Raises IllegalTransition if the edge is not legal or the job is no longer in ``src``.
        """
        if not is_legal(src, dst):
            raise IllegalTransition(f"job {job_id}: {src.value} -> {dst.value} is not a legal transition")
        now = time.time() if now is None else now
        sets = {"state": dst.value, "updated_at": now, "reason": reason}
        for k, v in fields.items():
            if k in ("result", "last_metrics"):
                v = json.dumps(v)
            sets[k] = v
        assign = ", ".join(f"{k}=?" for k in sets)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cur = self._conn.execute(
                    f"UPDATE jobs SET {assign} WHERE id=? AND state=?", (*sets.values(), job_id, src.value)
                )
                if cur.rowcount != 1:
                    self._conn.execute("ROLLBACK")
                    current = self.get(job_id)  # raises JobNotFound
                    raise IllegalTransition(
                        f"job {job_id} is {current.state.value}, not {src.value}; cannot move to {dst.value}"
                    )
                self._conn.execute(
                    "INSERT INTO transitions (job_id, src, dst, ts, reason) VALUES (?,?,?,?,?)",
                    (job_id, src.value, dst.value, now, reason),
                )
                self._conn.execute("COMMIT")
            except IllegalTransition:
                raise
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        return self.get(job_id)

    def record_metrics(self, rows: list[tuple[str, int, float, int | None, dict]]) -> None:
        """Append metric reports and update each job's last_metrics (merged) in one transaction."""
        if not rows:
            return
        last: dict[str, dict] = {}
        for jid, _a, _ts, step, data in rows:
            merged = last.setdefault(jid, {})
            merged.update(data)
            if step is not None:
                merged["step"] = step
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO metrics (job_id, attempt, ts, step, data) VALUES (?,?,?,?,?)",
                    [(j, a, ts, st, json.dumps(d)) for j, a, ts, st, d in rows],
                )
                for jid, merged in last.items():
                    row = self._conn.execute("SELECT last_metrics FROM jobs WHERE id=?", (jid,)).fetchone()
                    if row is None:
                        continue
                    current = json.loads(row[0]) if row[0] else {}
                    current.update(merged)
                    self._conn.execute("UPDATE jobs SET last_metrics=? WHERE id=?", (json.dumps(current), jid))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
