"""The Coordinator's scheduled jobs and deadlines: the seams between ``policy.schedules`` /
``policy.steps.deadline_step`` (pure) and the control loop, as a mixin of ``CoordinatorCore``.

Owns: creating, listing, pausing, resuming and deleting schedules (``store/schedules.py``, in
``jobs.db``), the tick pass (each due schedule: ``decide_tick`` → submit a run / skip / cancel the
previous run and submit, the tick recorded by a conditional update), and the deadline pass (every
unfinished job with a ``deadline``: ``deadline_step`` → FAIL with cause ``deadline``). Schedules are
few and read from SQLite at start and on every change made here, so a pass costs a look at them.
"""

from __future__ import annotations

import logging
import sqlite3

from raycluster import constants as C
from raycluster.errors import IllegalTransition, InvalidJobSpec
from raycluster.policy.schedules import ScheduleView, TickAction, decide_tick, next_tick
from raycluster.policy.steps import deadline_step
from raycluster.spec import gcs_uris, parse_spec
from raycluster.store.schedules import ScheduleRecord, ScheduleStore, new_schedule_id

log = logging.getLogger("raycluster.coordinator")

# spec fields that make a schedule, not a run
_SCHEDULE_FIELDS = ("schedule", "concurrency_policy")


class SchedulesMixin:
    def _init_schedules(self) -> None:
        self.schedules = ScheduleStore(self.state_dir / "jobs.db")
        self._sched = {s.id: s for s in self.schedules.list()}
        self._deadlines: dict[str, tuple[float, float | None]] = {}  # job -> (deadline, expected_runtime_s)

    # ------------------------------------------------------------------ user calls
    def create_schedule(self, spec_data, idempotency_key: str | None = None) -> dict:
        """A scheduled job of a spec with ``schedule``. The same ``idempotency_key`` again (a retry)
        answers the schedule made the first time; with another spec it is refused (409)."""
        spec = parse_spec(spec_data)
        if idempotency_key is not None:
            if not 1 <= len(idempotency_key) <= 255:
                raise InvalidJobSpec("idempotency_key must be 1-255 characters", field="idempotency_key")
            old = self.schedules.find_by_key(idempotency_key)
            if old is not None:
                if old.spec != {k: v for k, v in spec.model_dump(mode="json", exclude_none=True).items()
                                if k not in _SCHEDULE_FIELDS} or old.cron != spec.schedule:
                    from raycluster.errors import IdempotencyKeyReused

                    raise IdempotencyKeyReused(f"idempotency key {idempotency_key!r} was already used for schedule "
                                               f"{old.id} with a different spec", field="idempotency_key")
                return old.to_dict()
        if spec.schedule is None:
            raise InvalidJobSpec("schedule: required to create a scheduled job (a cron expression, e.g. '0 2 * * *')",
                                 field="schedule")
        self.gate.check(spec, "its runs could never be placed")
        now = self.clock()
        run_spec = {k: v for k, v in spec.model_dump(mode="json", exclude_none=True).items() if k not in _SCHEDULE_FIELDS}
        rec = ScheduleRecord(id=new_schedule_id(), name=spec.name, spec=run_spec, cron=spec.schedule,
                             concurrency_policy=spec.concurrency_policy, tenant=spec.tenant, created_at=now,
                             updated_at=now, next_run_at=next_tick(spec.schedule, now), idempotency_key=idempotency_key)
        with self._lock:
            self.schedules.insert(rec)
            self._sched[rec.id] = rec
        uris = gcs_uris(spec.runtime_env)
        if uris:  # pinned from now on, for as long as the schedule exists
            self._guard("pin packages", self.ops.pin_uris, uris, C.PACKAGE_PIN_S)
        log.info("schedule %s (%s, %r, %s) created; next run at %.0f", rec.id, rec.name, rec.cron,
                 rec.concurrency_policy, rec.next_run_at)
        self.wake()
        return rec.to_dict()

    def list_schedules(self) -> list[dict]:
        return [s.to_dict() for s in self.schedules.list()]

    def get_schedule(self, schedule_id: str, runs: int = 100) -> dict:
        out = self.schedules.get(schedule_id).to_dict()
        out["run_jobs"] = [{k: j.to_dict()[k] for k in ("id", "state", "submitted_at", "finished_at", "cause", "reason")}
                           for j in self.store.list_by_schedule(schedule_id, runs)]
        return out

    def pause_schedule(self, schedule_id: str) -> dict:
        return self._set_schedule(schedule_id, paused=True)

    def resume_schedule(self, schedule_id: str) -> dict:
        """Ticks missed while paused are not made up: the next is the first after now."""
        rec = self.schedules.get(schedule_id)
        return self._set_schedule(schedule_id, paused=False, next_run_at=next_tick(rec.cron, self.clock()))

    def delete_schedule(self, schedule_id: str) -> dict:
        """No more runs; runs already submitted go on (cancel them as jobs)."""
        out = self._set_schedule(schedule_id, deleted=True)
        with self._lock:
            self._sched.pop(schedule_id, None)
        return out

    def _set_schedule(self, schedule_id: str, **fields) -> dict:
        with self._lock:
            self.schedules.get(schedule_id)  # JobNotFound
            rec = ScheduleRecord(**{**self.schedules.get(schedule_id).__dict__, **fields, "updated_at": self.clock()})
            self.schedules.update(schedule_id, **{**fields, "updated_at": rec.updated_at})
            if not rec.deleted:
                self._sched[schedule_id] = rec
        log.info("schedule %s: %s", schedule_id, fields)
        self.wake()
        return rec.to_dict()

    # ------------------------------------------------------------------ loop
    def _schedule_pass(self, now: float) -> None:
        for rec in list(self._sched.values()):
            if not rec.paused and now >= rec.next_run_at:
                self._guard(f"schedule {rec.id}", self._tick, rec, now)

    def _tick(self, rec: ScheduleRecord, now: float) -> None:
        prev = None
        if rec.last_job_id:
            try:
                prev = self.store.get(rec.last_job_id)
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
                    self.cancel(prev.id)
                except IllegalTransition:
                    pass  # it ended meanwhile
            try:
                job = self._submit_run(rec, now)
                fields.update(last_job_id=job.id, runs=rec.runs + 1, last_error=None)
                log.info("schedule %s: run %s submitted (%s)", rec.id, job.id, d.reason)
            except (InvalidJobSpec, ValueError) as exc:
                fields["last_error"] = f"the run could not be submitted: {exc}"
                log.warning("schedule %s: %s", rec.id, fields["last_error"])
        new = self.schedules.update(rec.id, expect_next_run_at=rec.next_run_at, **fields)
        self._sched[rec.id] = new

    def _submit_run(self, rec: ScheduleRecord, now: float):
        """One run of the schedule: a job of its spec, keyed by the tick (made once however often
        the tick is retried). Its entrypoint was checked when the schedule was made; a run whose code
        is gone fails with the import error like any job."""
        spec = parse_spec(rec.spec)
        key = f"{rec.id}@{rec.next_run_at:.0f}"
        try:
            job = self.store.insert(name=spec.name, spec=spec.model_dump(mode="json"), priority=spec.priority,
                                    tenant=spec.tenant, idempotency_key=key, schedule_id=rec.id, now=now)
        except sqlite3.IntegrityError:
            job = self.store.find_by_idempotency_key(key)
            if job is None:
                raise
        self.wake()
        return job

    def _note_deadline(self, rec) -> None:
        spec = self._spec(rec)
        if spec.deadline is not None:
            self._deadlines[rec.id] = (spec.deadline, spec.expected_runtime_s)

    def _deadline_pass(self, now: float) -> None:
        for jid, (deadline, expected) in list(self._deadlines.items()):
            rec = self._pending.get(jid) or self._active.get(jid)
            if rec is None:
                self._deadlines.pop(jid, None)
                continue
            step = deadline_step(rec, deadline, expected, now)
            if step is not None:
                self._deadlines.pop(jid, None)
                self._guard(f"deadline {jid}", self.apply, rec, step, now)
