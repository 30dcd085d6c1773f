"""The durable job table (``jobs.db``, SQLite WAL): one record definition, the store over it.

Owns: ``JobRecord`` — the one definition of a job row, from which the table's columns, its row
mapping and the HTTP API's ``Job`` model are derived — and ``JobStore``, the only code that reads
or writes ``jobs.db``. Every transition is a conditional update (``WHERE state=?``) checked
against ``lifecycle.LEGAL_TRANSITIONS``, so a stale writer (e.g. a Coordinator restarted mid-step)
cannot overwrite a newer state, and it is appended to the ``transitions`` audit table (with its
reason and ``Cause``) in the same transaction. Each insert and transition gives the row a new
``rev`` (a table-wide version), so the Coordinator reads only the rows that changed since its last
pass (``changed_since``) instead of the whole queue.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, Field

from raycluster.errors import IllegalTransition, JobNotFound
from raycluster.store.db import Table, connect
from raycluster.store.lifecycle import Cause, JobState, is_legal


class JobRecord(BaseModel):
    """One job, as stored and as answered (the API's ``Job`` adds only ``transitions``)."""

    id: str = Field(..., json_schema_extra={"sql": "PRIMARY KEY"})
    name: str
    spec: dict[str, Any]
    priority: int
    tenant: str | None = None
    state: JobState
    attempt: int = 0
    system_restarts: int = 0
    user_retries: int = 0
    submitted_at: float = 0.0
    started_at: float | None = Field(None, description="first RUNNING")
    attempt_started_at: float | None = Field(None, description="the current attempt RUNNING")
    finished_at: float | None = None
    updated_at: float = 0.0
    queued_at: float = Field(0.0, description="when queued, for FIFO and aging (kept across re-queues)")
    error: str | None = None
    reason: str | None = Field(None, description="why the last transition happened, in words")
    result: Any = None
    last_metrics: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(None, json_schema_extra={"sql": "UNIQUE"})
    cause: Cause | None = Field(None, description="why the last transition happened, as a stable code")
    waiting: str | None = Field(None, description="why a PENDING job is not placed yet (admission's last word)")
    placement_timeouts: int = Field(0, description="placements of this job that timed out so far")
    preemptions: int = Field(0, description="attempts that ended because a spot node of theirs was preempted")
    preempted: int = Field(0, description="times it was stopped for a higher-priority job (checkpointed first, "
                                          "queued again, no restart spent)")
    schedule_id: str | None = Field(None, description="the schedule this job is a run of")
    moving: dict[str, Any] | None = Field(None, description="a move off where it runs in progress (checkpoint "
                                                            "first): since, why, the checkpoint step it waits past "
                                                            "(``policy.evacuation.Move``); cleared by any transition")
    world_size: int | None = Field(None, description="the gang size of its current (or last) attempt; an elastic "
                                                     "gang's (``num_workers: {min, max}``) may change between attempts")
    attempt_spot: str | None = Field(None, description="the spot choice of its current attempt when it is not its "
                                                       "spec's: ``only`` for the attempt after a spot return (placed "
                                                       "again on spot, not on the next free on-demand room)")
    rev: int = Field(0, description="row version: grows with every insert and state change of any job "
                                    "(not with metric reports or waiting reasons)")

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["state"] = self.state.value
        d["cause"] = self.cause.value if self.cause is not None else None
        return d


JOBS = Table("jobs", JobRecord, extra_ddl="CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);\n"
                                          "CREATE INDEX IF NOT EXISTS jobs_order ON jobs(submitted_at, id);\n"
                                          "CREATE INDEX IF NOT EXISTS jobs_rev ON jobs(rev);\n"
                                          "CREATE INDEX IF NOT EXISTS jobs_schedule ON jobs(schedule_id);")

# the next row version, inside a write transaction (IMMEDIATE: writers are serialized, so versions
# are committed in order and a reader that saw version v has seen every row of version <= v)
_NEXT_REV = "(SELECT COALESCE(MAX(rev), 0) + 1 FROM jobs)"

_SCHEMA = """
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


def new_job_id() -> str:
    return "job-" + uuid.uuid4().hex[:12]


class JobStore:
    """Durable job table. Thread-safe; one instance per process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._conn = connect(self.path)
        self._lock = threading.RLock()
        with self._lock:
            JOBS.create(self._conn)
            self._conn.executescript(_SCHEMA)
            have = {row[1] for row in self._conn.execute("PRAGMA table_info(transitions)")}
            if "cause" not in have:  # databases written before causes existed
                self._conn.execute("ALTER TABLE transitions ADD COLUMN cause TEXT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _write(self, fn):
        """Run ``fn(conn)`` in one IMMEDIATE transaction under the store lock."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._conn)
                self._conn.execute("COMMIT")
                return out
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    # ----------------------------------------------------------------- reads
    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            row = self._conn.execute(f"SELECT {JOBS.select_list} FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(f"job {job_id!r} not found")
        return JOBS.row(row)

    def find_by_idempotency_key(self, key: str) -> JobRecord | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {JOBS.select_list} FROM jobs WHERE idempotency_key=?",
                                     (key,)).fetchone()
        return JOBS.row(row) if row else None

    def find_by_idempotency_keys(self, keys: list[str]) -> dict[str, JobRecord]:
        out: dict[str, JobRecord] = {}
        for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
            chunk = keys[i:i + 500]
            with self._lock:
                rows = self._conn.execute(f"SELECT {JOBS.select_list} FROM jobs WHERE idempotency_key IN "
                                          f"({','.join('?' * len(chunk))})", chunk).fetchall()
            out.update((r.idempotency_key, r) for r in map(JOBS.row, rows))
        return out

    def list(self, states: Iterable[JobState] | None = None, tenant: str | None = None,
             limit: int | None = None, offset: int = 0, newest_first: bool = False) -> list[JobRecord]:
        """Jobs in submission order (``newest_first``: the other way round), a page at a time."""
        sql = f"SELECT {JOBS.select_list} FROM jobs"
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
        sql += " ORDER BY submitted_at DESC, id DESC" if newest_first else " ORDER BY submitted_at, id"
        if limit is not None:
            sql += " LIMIT ? OFFSET ?"
            args.extend([limit, offset])
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [JOBS.row(r) for r in rows]

    def max_rev(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COALESCE(MAX(rev), 0) FROM jobs").fetchone()[0]

    def changed_since(self, rev: int) -> tuple[list[JobRecord], int]:
        """Rows inserted or transitioned after version ``rev`` (oldest first), and the newest version."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {JOBS.select_list} FROM jobs WHERE rev > ? ORDER BY rev",
                                      (rev,)).fetchall()
        recs = [JOBS.row(r) for r in rows]
        return recs, (recs[-1].rev if recs else rev)

    def transitions(self, job_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT src, dst, ts, reason, cause FROM transitions WHERE job_id=? ORDER BY seq", (job_id,)
            ).fetchall()
        return [{"from": s, "to": d, "ts": ts, "reason": r, "cause": c} for s, d, ts, r, c in rows]

    def metrics_history(self, job_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT attempt, ts, step, data FROM metrics WHERE job_id=? ORDER BY ts DESC LIMIT ?",
                (job_id, limit),
            ).fetchall()
        return [{"attempt": a, "ts": ts, "step": st, **json.loads(d)} for a, ts, st, d in reversed(rows)]

    def active_progress(self) -> list[dict[str, Any]]:
        """What metrics need of every job holding resources (PLACING/RUNNING/RECOVERING), without
        decoding specs: id, name, tenant, state, attempt, restarts, preemptions, last metrics."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, name, tenant, state, attempt, system_restarts, preemptions, preempted, last_metrics "
                "FROM jobs WHERE state IN (?,?,?)", (JobState.PLACING.value, JobState.RUNNING.value,
                                                     JobState.RECOVERING.value)).fetchall()
        return [{"id": i, "name": n, "tenant": t, "state": st, "attempt": a, "system_restarts": r,
                 "preemptions": (p or 0) + (pp or 0), "last_metrics": json.loads(m) if m else {}}
                for i, n, t, st, a, r, p, pp, m in rows]

    def list_by_schedule(self, schedule_id: str, limit: int = 100) -> list[JobRecord]:
        """The newest ``limit`` runs of a schedule, oldest first."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {JOBS.select_list} FROM jobs WHERE schedule_id=? "
                                      "ORDER BY submitted_at DESC, id DESC LIMIT ?", (schedule_id, limit)).fetchall()
        return [JOBS.row(r) for r in reversed(rows)]

    def count_transitions(self, job_ids: list[str], cause: Cause, since: float) -> dict[str, int]:
        """How many transitions of each job had ``cause`` at or after ``since``."""
        if not job_ids:
            return {}
        with self._lock:
            rows = self._conn.execute(
                f"SELECT job_id, COUNT(*) FROM transitions WHERE cause=? AND ts>=? AND job_id IN "
                f"({','.join('?' * len(job_ids))}) GROUP BY job_id", (cause.value, since, *job_ids)).fetchall()
        return dict(rows)

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            rows = self._conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        out = {s.value: 0 for s in JobState}
        out.update({s: n for s, n in rows})
        return out

    def queue_depth_by_priority(self) -> dict[int, int]:
        with self._lock:
            rows = self._conn.execute("SELECT priority, COUNT(*) FROM jobs WHERE state=? GROUP BY priority",
                                      (JobState.PENDING.value,)).fetchall()
        return dict(rows)

    # ----------------------------------------------------------------- writes
    def insert(self, *, name: str, spec: dict, priority: int, tenant: str | None,
               idempotency_key: str | None = None, now: float | None = None,
               schedule_id: str | None = None, by: str | None = None) -> JobRecord:
        """A new PENDING job. Raises sqlite3.IntegrityError when ``idempotency_key`` is taken."""
        return self.insert_many([dict(name=name, spec=spec, priority=priority, tenant=tenant,
                                      idempotency_key=idempotency_key, schedule_id=schedule_id, by=by)], now=now)[0]

    def insert_many(self, jobs: list[dict[str, Any]], now: float | None = None) -> list[JobRecord]:
        """New PENDING jobs (each a dict of name, spec, priority, tenant, idempotency_key), all or
        none in one transaction. Raises sqlite3.IntegrityError when an idempotency key is taken."""
        now = time.time() if now is None else now
        # a batch keeps its order in the queue: each job queued a microsecond after the one before
        # (ties would break on the random job ids)
        # ("by": who submitted it, through the API — kept in its reason and first transition)
        reasons = [f"submitted by {j['by']}" if j.get("by") else "submitted" for j in jobs]
        recs = [JobRecord(id=new_job_id(), **{k: v for k, v in j.items() if k != "by"}, state=JobState.PENDING,
                          submitted_at=now, updated_at=now, queued_at=now + i * 1e-6, cause=Cause.SUBMITTED,
                          reason=reason)
                for i, (j, reason) in enumerate(zip(jobs, reasons))]
        rows = [JOBS.encode(r.__dict__) for r in recs]
        names = [k for k in rows[0] if k != "rev"] if rows else []

        def write(conn: sqlite3.Connection) -> None:
            base = conn.execute(f"SELECT {_NEXT_REV}").fetchone()[0]
            for i, rec in enumerate(recs):
                rec.rev = base + i
            conn.executemany(f"INSERT INTO jobs ({', '.join(names)}, rev) VALUES ({','.join('?' * len(names))}, ?)",
                             [(*(row[k] for k in names), rec.rev) for row, rec in zip(rows, recs)])
            conn.executemany("INSERT INTO transitions (job_id, src, dst, ts, reason, cause) VALUES (?,?,?,?,?,?)",
                             [(rec.id, None, JobState.PENDING.value, now, rec.reason, Cause.SUBMITTED.value)
                              for rec in recs])

        if recs:
            self._write(write)
        return recs

    def transition(self, job_id: str, src: JobState, dst: JobState, *, cause: Cause, reason: str | None = None,
                   now: float | None = None, **fields: Any) -> JobRecord:
        """Move ``job_id`` from ``src`` to ``dst`` iff it is still in ``src``; set extra ``fields``.

        Raises IllegalTransition if the edge is not legal or the job is no longer in ``src``.
        """
        if not is_legal(src, dst):
            raise IllegalTransition(f"job {job_id}: {src.value} -> {dst.value} is not a legal transition")
        now = time.time() if now is None else now
        sets = JOBS.encode({"state": dst, "updated_at": now, "reason": reason, "cause": cause,
                            "waiting": None, "moving": None, **fields})

        def write(conn: sqlite3.Connection) -> None:
            cur = conn.execute(f"UPDATE jobs SET {', '.join(f'{k}=?' for k in sets)}, rev={_NEXT_REV} "
                               "WHERE id=? AND state=?",
                               (*sets.values(), job_id, src.value))
            if cur.rowcount != 1:
                current = self.get(job_id)  # raises JobNotFound
                raise IllegalTransition(
                    f"job {job_id} is {current.state.value}, not {src.value}; cannot move to {dst.value}")
            conn.execute("INSERT INTO transitions (job_id, src, dst, ts, reason, cause) VALUES (?,?,?,?,?,?)",
                         (job_id, src.value, dst.value, now, reason, cause.value))

        self._write(write)
        return self.get(job_id)

    def set_waiting(self, reasons: dict[str, str | None], state: JobState = JobState.PENDING) -> None:
        """Record why jobs wait (admission's decision for PENDING ones; the BudgetAutoscaler's for
        PLACING ones it rents nothing for); only jobs still in ``state`` change."""
        if reasons:
            self._write(lambda conn: conn.executemany(
                "UPDATE jobs SET waiting=? WHERE id=? AND state=?",
                [(why, jid, state.value) for jid, why in reasons.items()]))

    def set_moving(self, job_id: str, attempt: int, move: dict[str, Any] | None) -> bool:
        """Record (or clear, None) the move in progress of a RUNNING job's attempt; only while it is
        still in that state and attempt (a conditional update). True if the row changed."""
        def write(conn: sqlite3.Connection) -> int:
            return conn.execute("UPDATE jobs SET moving=? WHERE id=? AND state=? AND attempt=?",
                                (None if move is None else json.dumps(move), job_id, JobState.RUNNING.value,
                                 int(attempt))).rowcount

        return self._write(write) == 1

    def moving(self) -> list[dict[str, Any]]:
        """The moves recorded on RUNNING jobs (read once when a Coordinator starts)."""
        with self._lock:
            rows = self._conn.execute("SELECT moving FROM jobs WHERE state=? AND moving IS NOT NULL",
                                      (JobState.RUNNING.value,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def record_metrics(self, rows: list[tuple[str, int, float, int | None, dict]],
                       merge: list[tuple[str, int, float, int | None, dict]] | None = None) -> None:
        """Append metric reports and update each job's last_metrics (``merge``, default ``rows``,
        merged in their order) in one transaction."""
        if not rows:
            return
        last: dict[str, dict] = {}
        for jid, _a, _ts, step, data in rows if merge is None else merge:
            merged = last.setdefault(jid, {})
            merged.update(data)
            if step is not None:
                merged["step"] = step

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT INTO metrics (job_id, attempt, ts, step, data) VALUES (?,?,?,?,?)",
                             [(j, a, ts, st, json.dumps(d)) for j, a, ts, st, d in rows])
            for jid, merged in last.items():
                row = conn.execute("SELECT last_metrics FROM jobs WHERE id=?", (jid,)).fetchone()
                if row is None:
                    continue
                current = json.loads(row[0]) if row[0] else {}
                current.update(merged)
                conn.execute("UPDATE jobs SET last_metrics=? WHERE id=?", (json.dumps(current), jid))

        self._write(write)
