"""The Coordinator's scheduled jobs and deadlines: the seams between ``policy.schedules`` /
``policy.steps.deadline_step`` (pure) and the control loop, as two parts of the loop with their own
state, each handed only what it needs.

Owns: ``Schedules`` — creating, listing, pausing, resuming and deleting schedules
(``store/schedules.py``, in ``jobs.db``; a new one through the one submit gate), and the tick pass
(each due schedule: ``decide_tick`` → submit a run / skip / cancel the previous run and submit, the
tick recorded by a conditional update). Schedules are few and read from SQLite at start and on every
change made here, so a pass costs a look at them. ``Deadlines`` — the unfinished jobs with a
``deadline`` and the deadline pass (``deadline_step`` → FAIL with cause ``deadline``), run before
admission so a job that cannot finish in time never starts.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable

from raycluster.errors import IdempotencyKeyReused, IllegalTransition, InvalidJobSpec
from raycluster.policy.schedules import ScheduleView, TickAction, decide_tick, next_tick
from raycluster.policy.steps import deadline_step
from raycluster.spec import gcs_uris, parse_spec
from raycluster.store.jobs import JobStore
from raycluster.store.schedules import ScheduleRecord, ScheduleStore, new_schedule_id

log = logging.getLogger("raycluster.coordinator")

# spec fields that make a schedule, not a run
_SCHEDULE_FIELDS = ("schedule", "concurrency_policy")


class Schedules:
    """Handed: the job store (runs are job rows), the submit gate, ``cancel`` (a job, for Replace),
    ``pin`` (packages of a new schedule), the clock, the loop's wake-up and lock (the loop's pass
    reads the schedules under it) and its guard (a step's exception logged, never raised)."""

    def __init__(self, path: Path, *, jobs: JobStore, gate, cancel: Callable[[str], Any],
                 pin: Callable[[list[str]], None], clock: Callable[[], float], wake: Callable[[], None],
                 lock: threading.RLock, guard: Callable[..., bool]):
        self.store = ScheduleStore(path)
        self._jobs, self._gate, self._cancel, self._pin = jobs, gate, cancel, pin
        self._clock, self._wake, self._lock, self._guard = clock, wake, lock, guard
        self._live = {s.id: s for s in self.store.list()}

    def __bool__(self) -> bool:  # any live schedule: the loop's pass looks at them
        return bool(self._live)

    def package_uris(self) -> set[str]:
        """The packages every live schedule's runs need (pinned for as long as it exists)."""
        return {u for sched in self._live.values() for u in gcs_uris(sched.spec.get("runtime_env"))}

    # ------------------------------------------------------------------ user calls
    def create(self, spec_data, idempotency_key: str | None = None) -> dict:
        """A scheduled job of a spec with ``schedule``. The same ``idempotency_key`` again (a retry)
        answers the schedule made the first time; with another spec it is refused (409)."""
        spec = parse_spec(spec_data)
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 255:
                raise InvalidJobSpec("idempotency_key must be 1-255 characters", field="idempotency_key")
            old = self.store.find_by_key(idempotency_key)
            if old is not None:
                if old.spec != {k: v for k, v in spec.model_dump(mode="json", exclude_none=True).items()
                                if k not in _SCHEDULE_FIELDS} or old.cron != spec.schedule:
                    raise IdempotencyKeyReused(f"idempotency key {idempotency_key!r} was already used for schedule "
                                               f"{old.id} with a different spec", field="idempotency_key")
                return old.to_dict()
        if spec.schedule is None:
            raise InvalidJobSpec("schedule: required to create a scheduled job (a cron expression, e.g. '0 2 * * *')",
                                 field="schedule")
        self._gate.check(spec, "its runs could never be placed")
        now = self._clock()
        run_spec = {k: v for k, v in spec.model_dump(mode="json", exclude_none=True).items() if k not in _SCHEDULE_FIELDS}
        rec = ScheduleRecord(id=new_schedule_id(), name=spec.name, spec=run_spec, cron=spec.schedule,
                             concurrency_policy=spec.concurrency_policy, tenant=spec.tenant, created_at=now,
                             updated_at=now, next_run_at=next_tick(spec.schedule, now), idempotency_key=idempotency_key)
        with self._lock:
            self.store.insert(rec)
            self._live[rec.id] = rec
        uris = gcs_uris(spec.runtime_env)
        if uris:  # pinned from now on, for as long as the schedule exists
            self._guard("pin packages", self._pin, uris)
        log.info("schedule %s (%s, %r, %s) created; next run at %.0f", rec.id, rec.name, rec.cron,
                 rec.concurrency_policy, rec.next_run_at)
        self._wake()
        return rec.to_dict()

    def list(self) -> list[dict]:
        return [s.to_dict() for s in self.store.list()]

    def get(self, schedule_id: str, runs: int = 100) -> dict:
        out = self.store.get(schedule_id).to_dict()
        out["run_jobs"] = [{k: j.to_dict()[k] for k in ("id", "state", "submitted_at", "finished_at", "cause", "reason")}
                           for j in self._jobs.list_by_schedule(schedule_id, runs)]
        return out

    def pause(self, schedule_id: str) -> dict:
        return self._set(schedule_id, paused=True)

    def resume(self, schedule_id: str) -> dict:
        """Ticks missed while paused are not made up: the next is the first after now."""
        rec = self.store.get(schedule_id)
        return self._set(schedule_id, paused=False, next_run_at=next_tick(rec.cron, self._clock()))

    def delete(self, schedule_id: str) -> dict:
        """No more runs; runs already submitted go on (cancel them as jobs)."""
        out = self._set(schedule_id, deleted=True)
        with self._lock:
            self._live.pop(schedule_id, None)
        return out

    def _set(self, schedule_id: str, **fields) -> dict:
        with self._lock:
            self.store.get(schedule_id)  # JobNotFound
            rec = ScheduleRecord(**{**self.store.get(schedule_id).__dict__, **fields, "updated_at": self._clock()})
            self.store.update(schedule_id, **{**fields, "updated_at": rec.updated_at})
            if not rec.deleted:
                self._live[schedule_id] = rec
        log.info("schedule %s: %s", schedule_id, fields)
        self._wake()
        return rec.to_dict()

    # ------------------------------------------------------------------ the loop's pass
    def tick(self, now: float) -> None:
        for rec in list(self._live.values()):
            if not rec.paused and now >= rec.next_run_at:
                self._guard(f"schedule {rec.id}", self._tick, rec, now)

    def _tick(self, rec: ScheduleRecord, now: float) -> None:
        prev = None
        if rec.last_job_id:
            try:
                prev = self._jobs.get(rec.last_job_id)
            except Exception:
                prev = None
        running = prev is not None and not prev.state.terminal
        d = decide_tick(ScheduleView(rec.id, rec.cron, rec.concurrency_policy, rec.paused, rec.next_run_at),
                        running, rec.last_job_id, now)
        if d.action == TickAction.WAIT:
            return
        fields: dict = {"next_run_at": d.next_run_at, "last_tick_at": now, "updated_at": now}
        if d.action == TickAction.SKIP:
            fields["skipped"] = rec.skipped + 1
            log.info("schedule %s: %s", rec.id, d.reason)
        else:
            if d.action == TickAction.REPLACE and prev is not None:
                try:
                    self._cancel(prev.id)
                except IllegalTransition:
                    pass  # it ended meanwhile
            try:
                job = self.submit_run(rec, now)
                fields.update(last_job_id=job.id, runs=rec.runs + 1, last_error=None)
                log.info("schedule %s: run %s submitted (%s)", rec.id, job.id, d.reason)
            except (InvalidJobSpec, ValueError) as exc:
                fields["last_error"] = f"the run could not be submitted: {exc}"
                log.warning("schedule %s: %s", rec.id, fields["last_error"])
        new = self.store.update(rec.id, expect_next_run_at=rec.next_run_at, **fields)
        self._live[rec.id] = new

    def submit_run(self, rec: ScheduleRecord, now: float):
        """One run of the schedule: a job of its spec, keyed by the tick (made once however often
        the tick is retried). Its entrypoint was checked when the schedule was made; a run whose code
        is gone fails with the import error like any job."""
        spec = parse_spec(rec.spec)
        key = f"{rec.id}@{rec.next_run_at:.0f}"
        try:
            job = self._jobs.insert(name=spec.name, spec=spec.model_dump(mode="json"), priority=spec.priority,
                                    tenant=spec.tenant, idempotency_key=key, schedule_id=rec.id, now=now)
        except sqlite3.IntegrityError:
            job = self._jobs.find_by_idempotency_key(key)
            if job is None:
                raise
        self._wake()
        return job


class Deadlines:
    """The unfinished jobs with a deadline (job -> (deadline, expected_runtime_s)), noted as the loop
    reads them; its pass is handed how to find a job's row and how to apply a step."""

    def __init__(self, guard: Callable[..., bool]):
        self._guard = guard
        self._due: dict[str, tuple[float, float | None]] = {}

    def __bool__(self) -> bool:
        return bool(self._due)

    def note(self, job_id: str, spec) -> None:
        if spec.deadline is not None:
            self._due[job_id] = (spec.deadline, spec.expected_runtime_s)

    def drop(self, job_id: str) -> None:
        self._due.pop(job_id, None)

    def tick(self, now: float, row_of: Callable[[str], Any], apply: Callable[..., Any]) -> None:
        for jid, (deadline, expected) in list(self._due.items()):
            rec = row_of(jid)
            if rec is None:
                self._due.pop(jid, None)
                continue
            step = deadline_step(rec, deadline, expected, now)
            if step is not None:
                self._due.pop(jid, None)
                self._guard(f"deadline {jid}", apply, rec, step, now)
