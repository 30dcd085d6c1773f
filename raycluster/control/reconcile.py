"""The Coordinator's control loop: observe → decide → apply, one pass at a time, over parts.

Owns: the in-memory view of the non-terminal jobs (folded from the rows that changed since the
last pass, ``JobStore.changed_since``), each job's parsed spec, and the pass itself:

1. *observe* — changed rows into the view and the admission queue; rank status, placement-group
   readiness, free resources per node (``NodeCache``);
2. *decide* — a ``policy.steps.Step`` per active job (pure), then the parts in a stated order
   (``reconcile_once``), each handed what it uses, never the loop;
3. *apply* — ``apply(job, step)``, the one place a Step is carried out: the conditional state
   transition (committed to SQLite first: the intent), then the gang's mechanics (``Gangs``).

Each job's step and each part runs guarded (its exception is logged, the pass goes on) and timed
(``timings``). Everything in memory can be rebuilt: PLACING jobs find their named placement group
again, RUNNING jobs whose ranks died with the previous Coordinator move to RECOVERING (cause
``coordinator_restart``, no budget spent) — or end the move they were in (``Evacuations``).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path
from typing import Any

from raycluster import constants as C
from raycluster.control.admission import Admission
from raycluster.control.checkpoint_manager import CheckpointLookup
from raycluster.control.elastic.ledger import JobLedger
from raycluster.control.evacuation import Evacuations
from raycluster.control.health.registry import Health
from raycluster.control.nodes import NodeCache
from raycluster.control.elastic.demand import Demand, gangs_for_demand
from raycluster.control.observe.notify import Notifier, job_notification
from raycluster.control.rayops import GangOps, pg_name
from raycluster.control.gangs import Gangs
from raycluster.control.sizing import GangSizing
from raycluster.control.gate import SubmitGate
from raycluster.control.housekeeping import Housekeeping
from raycluster.control.preemption import Preemptions
from raycluster.control.reports import Reports
from raycluster.control.resize import Resizes
from raycluster.control.schedules import Deadlines, Schedules
from raycluster.control.sweeps import Sweeps
from raycluster.control.tenancy import Tenancy
from raycluster.errors import IllegalTransition
from raycluster.policy.admission import QueuedJob
from raycluster.provision import autoscaling
from raycluster.policy.recovery import RankStatus
from raycluster.policy.steps import (Action, Limits, Step, decide_placing, decide_running, moved_step,
                                     start_step)
from raycluster.policy.tenants import tenant_of
from raycluster.spec import JobSpec, gcs_uris
from raycluster.store import storage
from raycluster.store.jobs import JobRecord, JobStore
from raycluster.store.lifecycle import ACTIVE_STATES, SYSTEM_CAUSES, TERMINAL_STATES, Cause, JobState
from raycluster.store.trials import TrialStore
from raycluster.util.histogram import Histogram
from raycluster.util.timings import PartTimings

log = logging.getLogger("raycluster.coordinator")


class Reconciler:
    """The loop's state and steps; ``CoordinatorCore`` adds the user-facing calls on top. The chores
    are parts, each with its own state, handed what it uses (callables), never the loop: the submit
    gate (``control/gate.py``), node health (``control/health/registry.py``), the one move mechanism
    (``control/evacuation.py``), quotas and fair share (``control/tenancy.py``), deadlines and
    schedules (``control/schedules.py``), preemption (``control/preemption.py``), sweeps
    (``control/sweeps.py``), the demand told to Ray's autoscaler (``control/elastic/demand.py``),
    elastic gangs growing (``control/resize.py``); a gang's shape and size are ``control/sizing.py``'s."""

    def __init__(self, state_dir: Path, ops: GangOps, checkpoint_manager=None, self_handle=None,
                 storage_uri: str | None = None, clock=time.time, settings: dict | None = None):
        self.state_dir = Path(state_dir)
        self.store = JobStore(self.state_dir / "jobs.db")
        self.ops = ops
        self.nodes = NodeCache(ops.nodes, clock=clock)
        self.handle = self_handle
        self.storage_uri = storage_uri or str(self.state_dir)
        self.checkpoint_root = storage.join(self.storage_uri, "checkpoints")
        self.log_dir = storage.join(self.storage_uri, "logs")
        self.clock = clock
        self.started_at = clock()
        self.recent_steps: collections.deque[tuple[float, Step]] = collections.deque(maxlen=C.RECENT_STEPS_KEPT)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self.reports = Reports(self.store, clock)
        self.checkpoints = CheckpointLookup(checkpoint_manager)
        self._specs: dict[str, JobSpec] = {}
        # the non-terminal jobs as of the last pass, by state, and the version they were read at
        self._pending: dict[str, JobRecord] = {}
        self._active: dict[str, JobRecord] = {}
        self._packages: dict[str, list[str]] = {}  # job id -> the gcs:// packages it needs pinned
        self._rev: int | None = None
        self.admission = Admission(self.store, guard=self._guard,
                                   start=lambda job, now, size: self.apply(job, self._start_step(job, now, size), now))
        self.queue, self._waiting = self.admission.queue, self.admission.waiting
        # an elastic cluster: the nodes Ray's autoscaler may still rent, and the demand last told it
        elastic = autoscaling.recorded_config(self.state_dir)
        self.elastic_nodes = autoscaling.elastic_nodes(elastic)
        # ... as a gang of each spot choice may use them (a `never` gang: the on-demand types only)
        self.elastic_nodes_for = {s: autoscaling.elastic_nodes(elastic, s) for s in ("auto", "never", "only")}
        # the config's cap (the one in force may be set at run time: ``SubmitGate.live_cap``)
        self.config_cap_usd_per_hour, self.budget_types = autoscaling.budget_view(elastic)
        self.ledger = JobLedger(self.state_dir, bool(elastic), clock)
        self.sizing = GangSizing(spec_of=self._spec, rented=self.ledger.elastic, nodes=self.nodes,
                                 excluded=lambda: self.health.excluded(), attempts=lambda: self.attempts,
                                 active=lambda: self._active)
        self.demand = Demand(ops.request_resources)  # (elastic clusters: told each pass when it changed)
        self.timings = PartTimings()
        self.notifier = Notifier(self.state_dir, clock)
        self.tenancy = Tenancy(self.state_dir, clock, spend_of=self.ledger.tenant_spend, notify=self.notifier.emit,
                               prices=tuple((t.usd_per_hour, t.gpus, t.cpus) for t in self.budget_types))
        self.gate = SubmitGate(ops=ops, nodes=self.nodes, tenants=self.tenancy.config,
                               bundles_of=self.sizing.bundles,
                               elastic_nodes=self.elastic_nodes, elastic_nodes_for=self.elastic_nodes_for,
                               budget_types=self.budget_types, config_cap_usd_per_hour=self.config_cap_usd_per_hour,
                               state_dir=self.state_dir, clock=clock)
        self.evacuations = Evacuations(self.store, newest_step=self.checkpoints.newest_step, job=self._active.get,
                                       apply=self.apply, clock=clock)
        self.health = Health(self.state_dir, nodes=self.nodes, ops=ops, handle=self_handle, clock=clock,
                             notifier=self.notifier, evacuations=self.evacuations, placed_gangs=self._placed_gangs,
                             room_elsewhere=lambda jid, excl: (spec := self._specs.get(jid)) is None
                             or self.sizing.room_elsewhere(spec, excl), excluded_changed=self.queue.forget,
                             wake=self.wake, lock=self._lock, guard=self._guard)
        self.preemption = Preemptions(self.evacuations, job=self._active.__getitem__, waiter=self._waiter,
                                      placed_gangs=self._placed_gangs,
                                      preemptible_bundles=lambda rec: (self.sizing.held(rec)
                                                                       if self._spec(rec).preemptible else None),
                                      recent_preemptions=lambda ids, since: self.store.count_transitions(
                                          ids, Cause.PREEMPTED, since),
                                      newest_checkpoint_at=self.checkpoints.newest_at,
                                      free=lambda: self.nodes.totals_and_free(0.0)[1],
                                      may_rent_for=lambda jid: (self.ledger.elastic
                                                                and jid not in self.admission.budget_reasons),
                                      forget_queue=self.queue.forget)
        self.schedules = Schedules(self.state_dir / "jobs.db", jobs=self.store, gate=self.gate,
                                   cancel=lambda job_id: self.cancel(job_id),
                                   pin=lambda uris: self.ops.pin_uris(uris, C.PACKAGE_PIN_S), clock=clock,
                                   wake=self.wake, lock=self._lock, guard=self._guard)
        self.deadlines = Deadlines(self._guard)
        self.gangs = Gangs(ops, spec_of=self._spec, bundles_of=self.sizing.bundles,
                           first_ranks=lambda jid, spec, attempt: self.sweeps.first_ranks(jid, spec, attempt),
                           ledger=self.ledger, nodes=self.nodes, clock=clock, wake=self.wake, guard=self._guard,
                           launch_with={"checkpoint_root": self.checkpoint_root, "log_dir": self.log_dir,
                                        "checkpoint_manager": checkpoint_manager, "coordinator": self_handle,
                                        "settings": settings})  # (every rank runs with the Coordinator's)
        self.attempts = self.gangs.attempts  # (read by the parts' views and the API)
        self.sweeps = Sweeps(TrialStore(self.state_dir / "jobs.db"), clock=clock, wake=self.wake,
                             launch_ranks=self.gangs.launch_ranks, cancel=self.ops.cancel)
        self.housekeeping = Housekeeping(self.store, ops, packages=self._package_uris)
        self.resizes = Resizes(placed_gangs=self._placed_gangs, spec_of=self._spec,
                               bundle_of=lambda spec: self.sizing.bundles(spec, 1)[0],
                               free=self.sizing.free_for_new_gangs,  # (now: a cached view may miss a gang placed since)
                               queue_waits=lambda: self.admission.blocked is not None and bool(self._pending),
                               evacuations=self.evacuations)
        self.submit_to_running = Histogram((0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))
        self._last_fair = 0.0

    # ------------------------------------------------------------------ loop
    def wake(self) -> None:
        self._wake.set()

    def rank_started(self, job_id: str, attempt: int) -> None:
        """(From rank 0 as it starts.) Move the job to RUNNING now, not at the next tick; its rented
        nodes are charged from this moment (a job done before the loop saw it placed still ran)."""
        self.gangs.rank_started(job_id, attempt)
        self.wake()

    def wait(self, timeout_s: float) -> None:
        self._wake.wait(timeout_s)
        self._wake.clear()

    def next_wait_s(self) -> float:
        """Until the next pass: sooner while a placement group made in the last PLACING_FAST_WINDOW_S
        is still unplaced, or jobs wait and a gang's group was removed in that window (Ray places a
        group, and shows freed resources, some ms later; nothing wakes the loop when it does)."""
        now = self.clock()
        with self._lock:
            fresh = any(not a.placed and now - a.placing_since < C.PLACING_FAST_WINDOW_S
                        for a in self.attempts.values())
            fresh = fresh or bool(self._pending and now - self.gangs.freed_at < C.PLACING_FAST_WINDOW_S)
        wait_s = min(C.PLACING_POLL_S, C.RECONCILE_INTERVAL_S) if fresh else C.RECONCILE_INTERVAL_S
        look = self.sweeps.next_look_s(now)  # a sweep's next bundles may be due before that
        return wait_s if look is None else max(C.PLACING_POLL_S, min(wait_s, look))

    def reconcile_once(self) -> None:
        """One observe → decide → apply pass, the parts called in this order, each guarded (its
        exception is logged, the pass goes on) and timed (``timings``):

        observe the job table → each active job's step → health (verdicts; gangs to evacuate) →
        moves (end those checkpointed) → fair share → deadlines → admission → preemption →
        elastic gangs growing → schedules → demand told to Ray → housekeeping (orphaned placement
        groups, package pins)."""
        now = self.clock()
        part = self._part
        part("flush metrics", self.reports.flush)
        with self._lock:
            try:
                self._observe()
            except Exception:
                log.exception("reconcile: cannot read the job table")
                return
            for jid in [j for j in self.attempts if j not in self._active]:
                self._guard(f"teardown {jid}", self.gangs.end, jid)
            t0 = time.perf_counter()
            for job in list(self._active.values()):
                self._guard(f"{job.state.value} {job.id}", self._step_job, job, now)
            self.timings.add("jobs", time.perf_counter() - t0, True)
            part("health", self.health.tick, now)
            if self.evacuations:
                part("moves", self.evacuations.tick, now)
            if now - self._last_fair >= C.FAIRSHARE_INTERVAL_S:
                self._last_fair = now
                part("fair share", self._fair_share, now)
            if self.deadlines:  # before admission: a job that cannot finish in time never starts
                part("deadlines", self.deadlines.tick, now,
                     lambda jid: self._pending.get(jid) or self._active.get(jid), self.apply)
            if self._pending:
                part("admission", self._admit, now)
            if self.preemption:
                part("preemption", self.preemption.tick, now)
            part("elastic gangs", self.resizes.tick, now)
            if self.schedules:
                part("schedules", self.schedules.tick, now)
            if self.elastic_nodes:
                part("demand", self._tell_demand)
            part("housekeeping", self.housekeeping.tick, now)

    def _part(self, name: str, fn, *args) -> bool:
        t0 = time.perf_counter()
        ok = self._guard(name, fn, *args)
        self.timings.add(name, time.perf_counter() - t0, ok)
        return ok

    def _observe(self) -> None:
        """Fold the job rows that changed since the last pass into the in-memory view (all
        non-terminal rows at the first pass)."""
        if self._rev is None:
            rev = self.store.max_rev()  # first: a row changed after it is read again next pass
            recs = self.store.list([JobState.PENDING, *ACTIVE_STATES])
        else:
            recs, rev = self.store.changed_since(self._rev)
        for rec in recs:
            self._guard(f"read {rec.id}", self._note, rec)
        self._rev = rev if self._rev is None else max(self._rev, rev)

    def _note(self, rec: JobRecord) -> None:
        """Record a job row as read or as just written."""
        jid = rec.id
        if rec.state == JobState.PENDING:
            try:
                spec = self._spec(rec)
            except ValueError as exc:  # stored by a version whose spec this one no longer accepts
                self._drop_pending(jid)
                self.queue.discard(jid)
                self._note(self.store.transition(
                    jid, JobState.PENDING, JobState.FAILED, cause=Cause.SYSTEM_ERROR, now=self.clock(),
                    reason="its stored spec is not valid for this version", finished_at=self.clock(),
                    error=f"the stored spec is not valid for this version of raycluster: {exc}"))
                return
            self._active.pop(jid, None)
            old = self._pending.get(jid)
            self._waiting.move(jid, old.waiting if old else None, rec.waiting)
            self._pending[jid] = rec
            self.queue.put(self._queued(rec, spec))
        elif rec.state in TERMINAL_STATES:
            self._drop_pending(jid)
            self._active.pop(jid, None)
            self.queue.discard(jid)
            self._packages.pop(jid, None)
            self._specs.pop(jid, None)
            self.deadlines.drop(jid)
            self.sweeps.drop(jid)
            self.evacuations.drop(jid)
            return
        else:
            self._drop_pending(jid)
            self.queue.discard(jid)
            self._active[jid] = rec
        if jid not in self._packages:
            self._packages[jid] = gcs_uris(self._spec(rec).runtime_env)
            self.deadlines.note(jid, self._spec(rec))

    def _drop_pending(self, jid: str) -> None:
        rec = self._pending.pop(jid, None)
        if rec is not None:
            self._waiting.move(jid, rec.waiting, None)

    def _guard(self, what: str, fn, *args) -> bool:
        """Run one step; its exception is logged, never raised. True if it completed."""
        try:
            fn(*args)
            return True
        except IllegalTransition as exc:  # lost a race with a user action (e.g. cancel): re-read next tick
            log.info("reconcile %s: %s", what, exc)
        except Exception:
            log.exception("reconcile step %r failed; continuing", what)
        return False

    # ------------------------------------------------------------------ observe + decide
    def _spec(self, job: JobRecord) -> JobSpec:
        spec = self._specs.get(job.id)
        if spec is None:  # specs are immutable once stored: parse each once
            spec = self._specs[job.id] = JobSpec.model_validate(job.spec)
        return spec

    def decide(self, job: JobRecord, now: float) -> Step | None:
        """Observe one active job's attempt and decide its next step (None: nothing to do now)."""
        if job.state == JobState.RECOVERING:
            if self._spec(job).elastic and now - job.updated_at < C.ELASTIC_SETTLE_S:
                return None  # sized once Ray's free view shows the room its last attempt gave back
            return self._start_step(job, now)
        att = self.attempts.get(job.id)
        if job.state == JobState.PLACING:
            att = self.gangs.ensure_launched(job, self.health.excluded_key, now)
            if att.excluded != self.health.excluded_key and not self.ops.pg_ready(att.pg):
                self.gangs.replace_pg(job, att, self.health.excluded_key, now)  # never wait on a stale exclusion
            return decide_placing(job, ready=self.ops.pg_ready(att.pg), placing_for_s=now - att.placing_since,
                                  timeout_s=C.PLACEMENT_TIMEOUT_S, max_timeouts=C.MAX_PLACEMENT_TIMEOUTS, now=now)
        spec = self._spec(job)
        limits = Limits(spec.max_restarts, spec.max_user_retries, spec.max_runtime_s)
        if att is None or att.refs is None:  # its rank tasks died with the previous Coordinator
            # (a move in progress then ends the way it was going, not as a restart)
            return self.evacuations.after_restart(job) or decide_running(job, limits, None, settled=True, now=now)
        if spec.trials is not None:
            self.sweeps.grow(job, att, now)
        results = self.ops.poll(att.refs)
        if spec.trials is not None:
            results = self.sweeps.results(job.id, att, results)
        if att.first_failure_at is None and any(
                r.status in (RankStatus.USER_ERROR, RankStatus.SYSTEM_ERROR) for r in results):
            att.first_failure_at = now
        for r in results:  # a rank died with its node: the health verdict need not wait for Ray's node table
            if r.cause == Cause.NODE_LOST and att.nodes and r.rank < len(att.nodes):
                self.health.node_died(att.nodes[r.rank], now)
        settled = att.first_failure_at is not None and now - att.first_failure_at >= C.FAILURE_SETTLE_S
        step = decide_running(job, limits, results, settled=settled, now=now)
        if (step is not None and step.cause in SYSTEM_CAUSES and step.action in (Action.RECOVER, Action.FAIL)
                and self.ledger.preempted(job.id, job.attempt)):  # on spot that is the normal case, not a failure
            step = moved_step(job, Cause.SPOT_PREEMPTED, "its spot node was taken back by the market; resumes "
                              "from its newest checkpoint (no restart spent)", step.fields.get("error"))
        return step

    def _step_job(self, job: JobRecord, now: float) -> None:
        step = self.decide(job, now)
        if step is None:
            return
        job = self.apply(job, step, now)
        if step.action == Action.MARK_RUNNING:  # a short job may already be done: look again now
            self._step_job(job, now)

    def _start_step(self, job: JobRecord, now: float, size: int | None = None) -> Step:
        """The START step of a job, at the size admission chose, else (placed again) ``GangSizing``'s."""
        spec = self._spec(job)
        return start_step(job, now, size or self.sizing.start_size(job),
                          spec.num_workers if spec.elastic else None)

    def _admit(self, now: float) -> None:
        free = self.sizing.free_for_new_gangs()
        quota, changed = self.tenancy.quota_view(self._gangs_holding())
        if changed:  # the last pass's decision may no longer hold
            self.queue.forget()
        self.preemption.blocked = self.admission.tick(now, free, quota, self._pending)

    # ------------------------------------------------------------------ apply
    def apply(self, job: JobRecord, step: Step, now: float) -> JobRecord:
        """Carry out one decision: commit the transition first (the intent), then act on Ray."""
        self.recent_steps.append((now, step))
        log.info("step %s", step.describe())
        if step.action == Action.START:
            if self.gangs.end(job.id) is None and job.state == JobState.RECOVERING:
                self.ops.remove_pg_by_name(pg_name(job.id, job.attempt))
            rec = self._transition(job, step, now)
            self.gangs.start(rec, self.health.excluded_key, now)
            self.admission.placing_again(job.id)
            return rec
        extra: dict[str, Any] = {}
        if step.action == Action.MARK_RUNNING:
            self.gangs.placed(job, now)
            if job.started_at is None:  # its first start
                self.submit_to_running.observe(max(0.0, now - job.submitted_at))
        else:  # REQUEUE, PREEMPT, SUCCEED, RECOVER, FAIL: the attempt is over
            self.gangs.end(job.id)
            if step.action == Action.RECOVER and self.ledger.preempted(job.id, job.attempt):
                extra["preemptions"] = job.preemptions + 1  # a spot node of its was taken back
            if step.action == Action.SUCCEED:
                self.reports.flush()
                spec = self._spec(job)
                if spec.trials is not None:  # a sweep's result: its counts and best trial
                    extra["result"] = self.sweeps.summary(job.id, spec)
        return self._transition(job, step, now, **extra)

    def _tell_demand(self) -> None:
        a = self.admission
        running, queued = gangs_for_demand(self._active, self.attempts, self._pending, self.queue, a.budget_reasons,
                                           self.sizing.held)
        key = (self.queue.version, frozenset(self._active), a.budget_version, a.version)
        self.demand.tell(key, running, queued)

    def _transition(self, job: JobRecord, step: Step, now: float, **extra: Any) -> JobRecord:
        rec = self.store.transition(job.id, step.src, step.dst, cause=step.cause, reason=step.reason, now=now,
                                    **{**step.fields, **extra})
        if rec.state == JobState.FAILED or step.cause == Cause.PREEMPTED or "preemptions" in extra:
            self._guard(f"notify {job.id}", self.notifier.emit, *job_notification(rec, step))
        if rec.state != JobState.PENDING:  # a job queued again waits for the next pass's admission
            self._note(rec)
        return rec

    # ------------------------------------------------------------------ what the parts are handed
    def _queued(self, rec: JobRecord, spec: JobSpec) -> QueuedJob:
        return QueuedJob(rec.id, rec.priority, rec.queued_at, tuple(self.sizing.bundles(spec)),
                         spec.placement_strategy.value,
                         tenant=rec.tenant, boost_s=self.tenancy.boost_of(rec.tenant), min_bundles=spec.min_workers)

    def _gangs_holding(self) -> list[tuple[str | None, list[dict[str, float]]]]:
        """(tenant, bundles) of every gang that holds or is about to hold resources."""
        return [(rec.tenant, self.sizing.held(rec)) for rec in self._active.values()]

    def _fair_share(self, now: float) -> None:
        moved = self.tenancy.tick(now, self._gangs_holding(), (j.tenant for j in self.queue.ordered()))
        if moved:  # re-key the queued jobs of tenants whose boost changed
            for job in self.queue.ordered():
                if tenant_of(job.tenant) in moved and (rec := self._pending.get(job.job_id)) is not None:
                    self.queue.put(self._queued(rec, self._spec(rec)))

    def _placed_gangs(self) -> list[tuple[JobRecord, list[str]]]:
        """Each RUNNING gang that is placed, with the node of each of its bundles."""
        out = []
        for jid, att in self.attempts.items():
            rec = self._active.get(jid)
            if rec is not None and rec.state == JobState.RUNNING and att.placed:
                out.append((rec, list(att.nodes or [])))
        return out

    def _waiter(self, job_id: str) -> tuple[JobRecord, list, str] | None:
        rec = self._pending.get(job_id)
        if rec is None:
            return None
        spec = self._spec(rec)  # (an elastic gang needs room for its smallest size)
        return rec, self.sizing.bundles(spec, spec.min_workers), spec.placement_strategy.value

    def _package_uris(self) -> set[str]:
        """The packages (working_dir, py_modules) of every job not yet finished and every schedule."""
        return {u for us in self._packages.values() for u in us} | set(self.schedules.package_uris())
