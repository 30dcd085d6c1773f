"""The Coordinator's control loop: observe → decide → apply, one pass at a time.

Owns: the in-memory handles of the attempts the Coordinator runs (placement group + one ObjectRef
per rank) and the reconcile pass over the job table:

1. *observe* — the job rows that changed since the last pass (``JobStore.changed_since``: rows
   carry a version, so a long queue that does not change costs nothing to read) folded into the
   in-memory view of non-terminal jobs and the ordered ``AdmissionQueue``; rank task status
   (``GangOps.poll``), placement-group readiness, free resources per node (``NodeCache``);
2. *decide* — a ``policy.steps.Step`` per active job (``decide_placing`` / ``decide_running`` /
   ``start_step``) and ``AdmissionQueue.decide`` for the queue (skipped when neither the queue nor
   the free resources changed): pure functions;
3. *apply* — ``apply(job, step)``, the one place a Step is carried out: the conditional state
   transition (committed to SQLite first: the intent), then placement groups and rank tasks.

Each job's step and each periodic chore runs under ``_guard``: its exception is logged and the
pass goes on. Everything in memory can be rebuilt: on (re)start, PLACING jobs find their named
placement group again, RUNNING jobs whose rank tasks died with the previous Coordinator move to
RECOVERING (cause ``coordinator_restart``, no budget consumed), and placement groups that belong
to no active attempt are removed.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raycluster import constants as C
from raycluster.control.elastic.ledger import JobLedger
from raycluster.control.health.registry import HealthMixin
from raycluster.control.nodes import NodeCache
from raycluster.control.elastic.demand import Demand, gangs_for_demand
from raycluster.control.observe.notify import Notifier, job_notification
from raycluster.control.rayops import GangOps, pg_name
from raycluster.control.gate import SubmitGate
from raycluster.control.schedules import Deadlines, Schedules
from raycluster.control.sharing import SharingMixin
from raycluster.control.sweeps import Sweeps
from raycluster.errors import IllegalTransition
from raycluster.policy.admission import AdmissionQueue, WaitingIndex
from raycluster.policy.budget import with_kind
from raycluster.policy.placement import place
from raycluster.provision import autoscaling
from raycluster.policy.recovery import RankStatus
from raycluster.policy.steps import (Action, Limits, Step, decide_placing, decide_running, moved_step,
                                     start_step)
from raycluster.spec import JobSpec, gcs_uris
from raycluster.store import storage
from raycluster.store.jobs import JobRecord, JobStore
from raycluster.store.lifecycle import ACTIVE_STATES, SYSTEM_CAUSES, TERMINAL_STATES, Cause, JobState
from raycluster.store.trials import TrialStore
from raycluster.util.histogram import Histogram

log = logging.getLogger("raycluster.coordinator")


@dataclass
class Attempt:
    job_id: str
    attempt: int
    pg: Any
    placing_since: float
    refs: list | None = None
    placed: bool = False  # the placement group is created (its resources show as used)
    nodes: list | None = None  # the node of each bundle, once placed
    first_failure_at: float | None = None
    excluded: frozenset = frozenset()  # the nodes its placement group keeps off (as when it was made)


class Reconciler(SharingMixin, HealthMixin):
    """The loop's state and steps; ``CoordinatorCore`` adds the user-facing calls on top; tenants
    and preemption are ``SharingMixin``'s (``control/sharing.py``), node health ``HealthMixin``'s; the
    other chores are parts with their own state: the submit gate (``control/gate.py``), schedules and
    deadlines (``control/schedules.py``), sweeps the ``Sweeps`` part's (``control/sweeps.py``),
    the demand told to Ray's autoscaler (``control/elastic/demand.py``)."""

    def __init__(self, state_dir: Path, ops: GangOps, checkpoint_manager=None, self_handle=None,
                 storage_uri: str | None = None, clock=time.time):
        self.state_dir = Path(state_dir)
        self.store = JobStore(self.state_dir / "jobs.db")
        self.ops = ops
        self.nodes = NodeCache(ops.nodes, clock=clock)
        self.cm = checkpoint_manager
        self.handle = self_handle
        self.storage_uri = storage_uri or str(self.state_dir)
        self.checkpoint_root = storage.join(self.storage_uri, "checkpoints")
        self.log_dir = storage.join(self.storage_uri, "logs")
        self.clock = clock
        self.started_at = clock()
        self.attempts: dict[str, Attempt] = {}
        self.recent_steps: collections.deque[tuple[float, Step]] = collections.deque(maxlen=C.RECENT_STEPS_KEPT)
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._metrics: list[tuple] = []
        self._metrics_lock = threading.Lock()
        self._specs: dict[str, JobSpec] = {}
        # the non-terminal jobs as of the last pass, by state, and the version they were read at
        self._pending: dict[str, JobRecord] = {}
        self._waiting = WaitingIndex()  # the pending jobs by their stored waiting reason
        self._active: dict[str, JobRecord] = {}
        self._packages: dict[str, list[str]] = {}  # job id -> the gcs:// packages it needs pinned
        self._rev: int | None = None
        self.queue = AdmissionQueue(C.STARVATION_THRESHOLD_S, C.AGING_S)
        # why the BudgetAutoscaler rents nothing for a waiting job (shown instead of "no room")
        self.budget_reasons: dict[str, str] = {}
        self._placing_waiting: dict[str, str] = {}  # placing gangs -> the budget reason written on their rows
        self.budget_version = 0
        # an elastic cluster: the nodes Ray's autoscaler may still rent, and the demand last told it
        elastic = autoscaling.recorded_config(self.state_dir)
        self.elastic_nodes = autoscaling.elastic_nodes(elastic)
        # ... as a gang of each spot choice may use them (a `never` gang: the on-demand types only)
        self.elastic_nodes_for = {s: autoscaling.elastic_nodes(elastic, s) for s in ("auto", "never", "only")}
        # the config's cap (the one in force may be set at run time: ``SubmitGate.live_cap``)
        self.config_cap_usd_per_hour, self.budget_types = autoscaling.budget_view(elastic)
        self.ledger = JobLedger(self.state_dir, bool(elastic), clock)
        self.demand = Demand(ops.request_resources)  # (elastic clusters: told each pass when it changed)
        self._waiting_version = 0
        self._last_sweep = 0.0
        self._last_pin = 0.0
        self._last_fair = 0.0
        self._freed_at = float("-inf")  # when a gang's placement group was last removed
        self._rank_started: dict[tuple[str, int], float] = {}  # (job, attempt) -> when its rank 0 started
        self._init_sharing()
        self.gate = SubmitGate(ops=ops, nodes=self.nodes, tenants=self.tenants.current, bundles_of=self._bundles,
                               elastic_nodes=self.elastic_nodes, elastic_nodes_for=self.elastic_nodes_for,
                               budget_types=self.budget_types, config_cap_usd_per_hour=self.config_cap_usd_per_hour,
                               state_dir=self.state_dir, clock=clock)
        self.schedules = Schedules(self.state_dir / "jobs.db", jobs=self.store, gate=self.gate,
                                   cancel=lambda job_id: self.cancel(job_id),
                                   pin=lambda uris: self.ops.pin_uris(uris, C.PACKAGE_PIN_S), clock=clock,
                                   wake=self.wake, lock=self._lock, guard=self._guard)
        self.deadlines = Deadlines(self._guard)
        self.sweeps = Sweeps(TrialStore(self.state_dir / "jobs.db"), clock=clock, wake=self.wake,
                             launch_ranks=self._launch_ranks, cancel=self.ops.cancel)
        self._init_health()
        self.notifier = Notifier(self.state_dir, clock)
        self.submit_to_running = Histogram((0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600))

    # ------------------------------------------------------------------ loop
    def wake(self) -> None:
        self._wake.set()

    def rank_started(self, job_id: str, attempt: int) -> None:
        """(From rank 0 as it starts.) Move the job to RUNNING now, not at the next tick; its rented
        nodes are charged from this moment (a job done before the loop saw it placed still ran)."""
        self._rank_started.setdefault((job_id, int(attempt)), self.clock())
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
            fresh = fresh or bool(self._pending and now - self._freed_at < C.PLACING_FAST_WINDOW_S)
        wait_s = min(C.PLACING_POLL_S, C.RECONCILE_INTERVAL_S) if fresh else C.RECONCILE_INTERVAL_S
        look = self.sweeps.next_look_s(now)  # a sweep's next bundles may be due before that
        return wait_s if look is None else max(C.PLACING_POLL_S, min(wait_s, look))

    def reconcile_once(self) -> None:
        """One observe → decide → apply pass. Each step's exception is logged, never raised."""
        now = self.clock()
        self._guard("flush metrics", self._flush_metrics)
        with self._lock:
            try:
                self._observe()
            except Exception:
                log.exception("reconcile: cannot read the job table")
                return
            for jid in [j for j in self.attempts if j not in self._active]:
                self._guard(f"teardown {jid}", self._teardown, self.attempts.pop(jid))
            for job in list(self._active.values()):
                self._guard(f"{job.state.value} {job.id}", self._step_job, job, now)
            if now - self._last_health >= C.HEALTH_PASS_INTERVAL_S:
                self._last_health = now
                self._guard("health", self._health_pass, now)
            if now - self._last_fair >= C.FAIRSHARE_INTERVAL_S:
                self._last_fair = now
                self._guard("fair share", self._fair_share_pass, now)
            if self.deadlines:  # before admission: a job that cannot finish in time never starts
                self._guard("deadlines", self.deadlines.tick, now,
                            lambda jid: self._pending.get(jid) or self._active.get(jid), self.apply)
            if self._pending:
                self._guard("admission", self._admit, now)
            if self._blocked or self.preempting:
                self._guard("preemption", self._preempt_pass, now)
            if self.schedules:
                self._guard("schedules", self.schedules.tick, now)
            if self.elastic_nodes:
                self._guard("demand", self._tell_demand)
            if now - self._last_sweep > C.PG_SWEEP_INTERVAL_S:
                self._last_sweep = now
                self._guard("sweep", self.sweep_placement_groups)
            if now - self._last_pin > C.PACKAGE_PIN_S / 3:
                self._last_pin = now
                self._guard("pin packages", self._pin_packages)

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
            return start_step(job, now)
        att = self.attempts.get(job.id)
        if job.state == JobState.PLACING:
            att = self._ensure_launched(job, att, now)
            if att.excluded != self._excluded_key and not self.ops.pg_ready(att.pg):
                self._replace_pg(job, att, now)  # never wait on a stale exclusion
            return decide_placing(job, ready=self.ops.pg_ready(att.pg), placing_for_s=now - att.placing_since,
                                  timeout_s=C.PLACEMENT_TIMEOUT_S, max_timeouts=C.MAX_PLACEMENT_TIMEOUTS, now=now)
        spec = self._spec(job)
        limits = Limits(spec.max_restarts, spec.max_user_retries, spec.max_runtime_s)
        if att is None or att.refs is None:  # its rank tasks died with the previous Coordinator
            return decide_running(job, limits, None, settled=True, now=now)
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
                self.node_died(att.nodes[r.rank], now)
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

    def _ensure_launched(self, job: JobRecord, att: Attempt | None, now: float) -> Attempt:
        """A PLACING job's attempt with its ranks submitted. If this Coordinator holds nothing of it
        (it restarted: the ranks died with the previous one), reuse the attempt's named placement
        group (or create it); if an earlier launch failed, launch again (raises if it fails again)."""
        if att is None:
            spec = self._spec(job)
            name = pg_name(job.id, job.attempt)
            excluded = self._excluded_key
            pg = self.ops.get_pg(name) or self.ops.create_pg(name, self._bundles(spec), spec.placement_strategy.value,
                                                             sorted(excluded))
            att = self.attempts[job.id] = Attempt(job.id, job.attempt, pg, placing_since=now, excluded=excluded)
        if att.refs is None:
            self._launch(job, att)
        return att

    def _replace_pg(self, job: JobRecord, att: Attempt, now: float) -> None:
        """The nodes to keep off changed while the gang waits to be placed (a node healthy again,
        undrained, or newly excluded): its placement group is made again with the exclusion of now,
        under the same name, and its ranks launched into it."""
        log.info("%s: the excluded nodes changed while it was being placed: placement group made again", job.id)
        if att.refs:
            self.ops.cancel(att.refs)
        self.ops.remove_pg(att.pg)
        spec = self._spec(job)
        att.excluded = self._excluded_key
        att.pg = self.ops.create_pg(pg_name(job.id, att.attempt), self._bundles(spec), spec.placement_strategy.value,
                                    sorted(att.excluded))
        att.refs, att.placing_since = None, now
        self._launch(job, att)

    def _bundles(self, spec) -> list[dict[str, float]]:
        """The gang's bundles; on an elastic cluster a ``spot: only/never`` gang's ask for its kind's marker."""
        return with_kind(spec.bundles(), spec.spot) if self.ledger.elastic else spec.bundles()

    def _admit(self, now: float) -> None:
        _total, free = self.nodes.totals_and_free(0.0)
        excluded = self.excluded_nodes()
        if excluded:  # unhealthy and drained nodes take no new gang
            free = {n: r for n, r in free.items() if n not in excluded}
        # placement groups not created yet do not show in the free view: count them as taken
        for att in self.attempts.values():
            if not att.placed:
                spec = self._specs.get(att.job_id)
                placed = spec and place(self._bundles(spec), free, spec.placement_strategy.value)
                if placed:
                    free = placed[1]
        self.queue.configure(C.STARVATION_THRESHOLD_S, C.AGING_S)
        decision = self.queue.decide(free, now, self._quota_view())
        if decision is None:  # nothing it depends on changed since the last pass
            return
        self._blocked = decision.blocked
        done = True
        for jid in decision.admit:
            job = self._pending[jid]
            done &= self._guard(f"start {jid}", self.apply, job, start_step(job, now), now)
        groups = decision.groups
        if self.budget_reasons:  # the autoscaler rents nothing for these: say why
            br = self.budget_reasons
            groups = [(why, [j for j in ids if j not in br]) for why, ids in groups]
            by_reason: dict[str, list[str]] = {}
            for why, ids in decision.groups:
                for j in ids:
                    if j in br:
                        by_reason.setdefault(br[j], []).append(j)
            groups += list(by_reason.items())
        changed = self._waiting.changed(groups)
        done &= self._guard("record waiting reasons", self.store.set_waiting, changed)
        if not done:  # not all of it was carried out: decide again next pass
            self.queue.forget()
            return
        for jid, why in changed.items():
            rec = self._pending[jid]
            self._waiting.move(jid, rec.waiting, why)
            rec.waiting = why
        if changed:
            self._waiting_version += 1  # (the demand told to Ray leaves quota-held jobs out)

    # ------------------------------------------------------------------ apply
    def apply(self, job: JobRecord, step: Step, now: float) -> JobRecord:
        """Carry out one decision: commit the transition first (the intent), then act on Ray."""
        self.recent_steps.append((now, step))
        log.info("step %s", step.describe())
        if step.action == Action.START:
            old = self.attempts.pop(job.id, None)
            if old is not None:
                self._teardown(old)
            elif job.state == JobState.RECOVERING:
                self.ops.remove_pg_by_name(pg_name(job.id, job.attempt))
            rec = self._transition(job, step, now)
            spec = self._spec(job)
            excluded = self._excluded_key
            pg = self.ops.create_pg(pg_name(job.id, rec.attempt), self._bundles(spec), spec.placement_strategy.value,
                                    sorted(excluded))
            att = self.attempts[job.id] = Attempt(job.id, rec.attempt, pg, placing_since=now, excluded=excluded)
            self._launch(rec, att)
            why = self.budget_reasons.get(job.id)
            if why is not None:  # placed again while the BudgetAutoscaler rents nothing for it: say why
                self._placing_waiting[job.id] = why
                self._guard(f"waiting reason of {job.id}", self.store.set_waiting, {job.id: why}, JobState.PLACING)
            return rec
        extra: dict[str, Any] = {}
        if step.action == Action.MARK_RUNNING:
            att = self.attempts[job.id]
            att.placed = True
            self._guard(f"nodes of {job.id}", self._note_nodes, att)
            if job.started_at is None:  # its first start
                self.submit_to_running.observe(max(0.0, now - job.submitted_at))
            since = min(now, self._rank_started.pop((job.id, att.attempt), now))
            if self.ledger.elastic:
                self._guard(f"usage of {job.id}", self._record_usage, job, att, since)
        else:  # REQUEUE, PREEMPT, SUCCEED, RECOVER, FAIL: the attempt is over
            att = self.attempts.pop(job.id, None)
            if att is not None:
                self._teardown(att)
            if step.action == Action.RECOVER and self.ledger.preempted(job.id, job.attempt):
                extra["preemptions"] = job.preemptions + 1  # a spot node of its was taken back
            if step.action == Action.SUCCEED:
                self._flush_metrics()
                spec = self._spec(job)
                if spec.trials is not None:  # a sweep's result: its counts and best trial
                    extra["result"] = self.sweeps.summary(job.id, spec)
        return self._transition(job, step, now, **extra)

    def _tell_demand(self) -> None:
        running, queued = gangs_for_demand(self._active, self.attempts, self._pending, self.queue, self.budget_reasons,
                                           lambda rec: self._bundles(self._spec(rec)))
        key = (self.queue.version, frozenset(self._active), self.budget_version, self._waiting_version)
        self.demand.tell(key, running, queued)

    def _note_nodes(self, att: Attempt) -> None:
        att.nodes = self.ops.pg_nodes(att.pg)

    def _record_usage(self, job: JobRecord, att: Attempt, now: float) -> None:
        spec = self._spec(job)
        self.ledger.placed(job.id, att.attempt, self.ops.pg_nodes(att.pg), spec.resources.bundle(),
                           self.nodes.nodes(C.NODE_TOTALS_TTL_S), now)

    def _transition(self, job: JobRecord, step: Step, now: float, **extra: Any) -> JobRecord:
        rec = self.store.transition(job.id, step.src, step.dst, cause=step.cause, reason=step.reason, now=now,
                                    **{**step.fields, **extra})
        if rec.state == JobState.FAILED or step.cause == Cause.PREEMPTED or "preemptions" in extra:
            self._guard(f"notify {job.id}", self.notifier.emit, *job_notification(rec, step))
        if rec.state != JobState.PENDING:  # a job queued again waits for the next pass's admission
            self._note(rec)
        return rec

    def _launch(self, job: JobRecord, att: Attempt) -> None:
        """Submit the ranks into the attempt's placement group at once: Ray starts them the moment the
        group is placed, with no loop round trip. Never leaves half a gang running. (A sweep's bundles
        are independent: it starts one and the others once they pay off, ``control/sweeps.py``.)"""
        att.refs = None
        self._launch_ranks(job, att, self.sweeps.first_ranks(job.id, self._spec(job), att.attempt))

    def _launch_ranks(self, job: JobRecord, att: Attempt, ranks: range) -> None:
        spec = self._spec(job)
        bundle = spec.resources.bundle()
        refs: list = []
        try:
            for rank in ranks:
                launch = {
                    "job_id": job.id, "attempt": att.attempt, "rank": rank, "world_size": spec.num_workers,
                    "entrypoint": spec.entrypoint, "config": spec.config, "checkpoint_root": self.checkpoint_root,
                    "checkpoint_policy": spec.checkpoint.model_dump(), "checkpoint_manager": self.cm,
                    "coordinator": self.handle, "log_dir": self.log_dir, "sweep": Sweeps.launch_of(spec),
                }
                refs.append(self.ops.launch_rank(att.pg, rank, bundle, launch, spec.runtime_env,
                                                 f"{spec.name}:{job.id}:a{att.attempt}:r{rank}"))
        except BaseException:
            self.ops.cancel(refs)
            raise
        att.refs = (att.refs or []) + refs
        self.ops.watch(refs, self.wake)

    def _teardown(self, att: Attempt) -> None:
        self._rank_started.pop((att.job_id, att.attempt), None)
        if att.placed:
            self._guard(f"usage of {att.job_id}", self.ledger.ended, att.job_id, att.attempt, self.clock())
        if att.refs:
            pending = [ref for ref, r in zip(att.refs, self.ops.poll(att.refs)) if r.status == RankStatus.RUNNING]
            self.ops.cancel(pending)
        self.ops.remove_pg(att.pg)
        self._freed_at = self.clock()  # Ray's free view shows it some ms later: look again soon

    # ------------------------------------------------------------------ chores
    def _pin_packages(self) -> None:
        """Renew the GCS pins of the uploaded packages (working_dir, py_modules) of every job not yet
        finished: Ray deletes a package once no job, actor or worker refers to it, and the Ray job
        that uploaded it (``ray job submit --working-dir``) may end long before our job is placed.
        A schedule's packages are pinned for as long as it exists (its runs need them at every tick)."""
        uris = sorted({u for us in self._packages.values() for u in us}
                      | self.schedules.package_uris())
        if uris:
            self.ops.pin_uris(uris, C.PACKAGE_PIN_S)

    def sweep_placement_groups(self) -> None:
        """Remove placement groups named by us that belong to no active attempt."""
        keep = {pg_name(j.id, j.attempt) for j in self.store.list(list(ACTIVE_STATES))}
        for name in self.ops.our_pg_names():
            if name not in keep:
                log.info("removing orphaned placement group %s", name)
                self.ops.remove_pg_by_name(name)

    def _flush_metrics(self) -> None:
        with self._metrics_lock:
            rows, self._metrics = self._metrics, []
        if rows:
            try:
                self.store.record_metrics(rows)
            except Exception:
                with self._metrics_lock:  # keep them for the next try
                    self._metrics = rows + self._metrics
                raise
