"""The Coordinator: durable priority queue, admission, gang placement, lifecycle, recovery.

Owns: the job table (through JobStore, ``<state_dir>/jobs.db``) and the in-memory handles of the
attempts it is running (placement group + one ObjectRef per rank). Everything durable is in
SQLite; everything in memory can be rebuilt: on (re)start, PLACING jobs find their named
placement group again, RUNNING jobs whose rank tasks died with the previous Coordinator move to
RECOVERING (no budget consumed) and resume from their latest checkpoint, and placement groups
that belong to no active attempt are removed.

``CoordinatorCore`` is the logic (plain class, driven by any object with RayOps' interface);
``Coordinator`` is the named, detached, restartable Ray actor that wraps it and runs the
reconcile loop in a background thread: observe (job table, rank tasks, node resources) →
decide (admission.decide_admission, recovery.classify/decide_recovery) → apply (transitions,
placement groups, tasks). One step's exception is logged and never stops the loop.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from raycluster import constants as C
from raycluster.admission import AdmissionContext, QueuedJob, decide_admission, infeasible_reason, place
from raycluster.errors import (ClusterUnavailable, EntrypointImportError, IllegalTransition, InfeasibleJob,
                               InvalidJobSpec, RayClusterError)
from raycluster.executor import rank_log_path
from raycluster.recovery import Action, AttemptOutcome, RankStatus, classify, decide_recovery
from raycluster.rayops import RayOps, pg_name
from raycluster.spec import JobSpec, parse_spec
from raycluster.state import ACTIVE_STATES, JobRecord, JobState, JobStore

log = logging.getLogger("raycluster.coordinator")

_LOG_NAME_RE = re.compile(r"^a(\d+)-r(\d+)\.log$")
MAX_LOG_TAIL_LINES = 100_000


def _tail_lines(path: Path, n: int, chunk: int = 64 * 1024) -> list[str]:
    """The last ``n`` lines of a text file (read backwards in chunks; no trailing newlines)."""
    if n <= 0:
        return []
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        pos = f.tell()
        data = b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(chunk, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-n:]


def gcs_uris(runtime_env: dict | None) -> list[str]:
    """The gcs:// package URIs a runtime_env refers to (working_dir, py_modules)."""
    if not runtime_env:
        return []
    out = []
    wd = runtime_env.get("working_dir")
    if isinstance(wd, str) and wd.startswith("gcs://"):
        out.append(wd)
    for m in runtime_env.get("py_modules") or []:
        if isinstance(m, str) and m.startswith("gcs://"):
            out.append(m)
    return out


@dataclass
class Attempt:
    job_id: str
    attempt: int
    pg: Any
    placing_since: float
    refs: list | None = None
    placed: bool = False  # the placement group is created (its resources show as used)
    first_failure_at: float | None = None


@dataclass
class _Cache:
    entries: dict[str, float] = field(default_factory=dict)

    def fresh(self, key: str, now: float, ttl_s: float) -> bool:
        ts = self.entries.get(key)
        return ts is not None and now - ts < ttl_s


class CoordinatorCore:
    def __init__(self, state_dir: Path, ops: RayOps, checkpoint_manager=None, self_handle=None,
                 checkpoint_root: str | None = None, clock=time.time):
        self.state_dir = Path(state_dir)
        self.store = JobStore(self.state_dir / "jobs.db")
        self.ops = ops
        self.cm = checkpoint_manager
        self.handle = self_handle
        self.checkpoint_root = checkpoint_root or str(self.state_dir / "checkpoints")
        self.clock = clock
        self.attempts: dict[str, Attempt] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._metrics: list[tuple] = []
        self._metrics_lock = threading.Lock()
        self._ep_cache = _Cache()
        self._specs: dict[str, JobSpec] = {}
        self._totals: tuple[float, dict] = (0.0, {})
        self._last_sweep = 0.0
        self._last_pin = 0.0
        self.log_dir = self.state_dir / "logs"
        self.started_at = clock()

    # =========================================================================== API
    def submit(self, spec_data: dict | str, idempotency_key: str | None = None) -> dict:
        spec = parse_spec(spec_data)
        if idempotency_key:
            existing = self.store.find_by_idempotency_key(idempotency_key)
            if existing is not None:
                return existing.to_dict()
        self._check_entrypoint(spec)
        total = self._node_totals()
        why = infeasible_reason(spec.bundles(), spec.placement_strategy.value, total)
        if why:
            raise InfeasibleJob(f"job can never be placed: {why}", field="num_workers")
        try:
            rec = self.store.insert(name=spec.name, spec=spec.model_dump(mode="json"), priority=spec.priority,
                                    tenant=spec.tenant, idempotency_key=idempotency_key, now=self.clock())
        except sqlite3.IntegrityError:  # a concurrent retry with the same key won the race
            existing = self.store.find_by_idempotency_key(idempotency_key or "")
            if existing is None:
                raise
            return existing.to_dict()
        log.info("submitted %s (%s, priority %d, %d workers)", rec.id, spec.name, spec.priority, spec.num_workers)
        if gcs_uris(spec.runtime_env):  # keep uploaded packages alive after the submitting Ray job ends
            self._guard("pin packages", self.ops.pin_uris, gcs_uris(spec.runtime_env), C.PACKAGE_PIN_S)
        self._wake.set()
        return rec.to_dict()

    def _node_totals(self) -> dict[str, dict[str, float]]:
        """Per-node totals for feasibility checks, refreshed at most every NODE_TOTALS_TTL_S."""
        ts, totals = self._totals
        now = self.clock()
        if now - ts > C.NODE_TOTALS_TTL_S or not totals:
            totals, _free = self.ops.node_resources()
            self._totals = (now, totals)
        return totals

    def _check_entrypoint(self, spec: JobSpec) -> None:
        key = spec.entrypoint + "|" + json.dumps(spec.runtime_env, sort_keys=True)
        now = self.clock()
        if self._ep_cache.fresh(key, now, C.ENTRYPOINT_CHECK_CACHE_S):
            return
        try:
            reason = self.ops.check_entrypoint(spec.entrypoint, spec.runtime_env, C.ENTRYPOINT_CHECK_TIMEOUT_S)
        except ray.exceptions.RuntimeEnvSetupError as exc:
            raise InvalidJobSpec(f"runtime_env cannot be set up: {str(exc)[-500:]}", field="runtime_env") from None
        except ray.exceptions.GetTimeoutError:
            raise ClusterUnavailable("timed out checking the entrypoint; the cluster may be busy") from None
        if reason:
            raise EntrypointImportError(f"entrypoint {spec.entrypoint!r} cannot be used: {reason}",
                                        field="entrypoint")
        self._ep_cache.entries[key] = now

    def get(self, job_id: str) -> dict:
        rec = self.store.get(job_id)
        out = rec.to_dict()
        out["transitions"] = self.store.transitions(job_id)
        return out

    def list(self, states: list[str] | None = None, tenant: str | None = None, limit: int | None = None,
             offset: int = 0) -> list[dict]:
        st = [JobState(s) for s in states] if states else None
        return [r.to_dict() for r in self.store.list(st, tenant, limit, offset)]

    def metrics(self, job_id: str, limit: int = 1000) -> list[dict]:
        self.store.get(job_id)
        self._flush_metrics()
        return self.store.metrics_history(job_id, limit)

    def logs(self, job_id: str, tail_lines: int = 200) -> list[dict]:
        """The last ``tail_lines`` lines of every rank log of the job:
        ``[{"attempt": a, "rank": r, "lines": [...]}, ...]``, attempts then ranks ascending."""
        self.store.get(job_id)  # JobNotFound
        n = max(0, min(int(tail_lines), MAX_LOG_TAIL_LINES))
        job_dir = rank_log_path(self.log_dir, job_id, 0, 0).parent
        found = []
        try:
            names = os.listdir(job_dir)
        except OSError:  # no rank has started yet
            return []
        for name in names:
            m = _LOG_NAME_RE.match(name)
            if m:
                found.append((int(m.group(1)), int(m.group(2)), job_dir / name))
        out = []
        for attempt, rank, path in sorted(found):
            try:
                lines = _tail_lines(path, n)
            except OSError:
                continue
            out.append({"attempt": attempt, "rank": rank, "lines": lines})
        return out

    def cancel(self, job_id: str) -> dict:
        with self._lock:
            rec = self.store.get(job_id)
            if rec.state.terminal:
                raise IllegalTransition(f"job {job_id} is already {rec.state.value}; nothing to cancel")
            rec = self.store.transition(job_id, rec.state, JobState.CANCELLED, reason="cancelled by user",
                                        finished_at=self.clock())
            att = self.attempts.pop(job_id, None)
            if att is not None:
                self._teardown(att)
            else:
                self.ops.remove_pg_by_name(pg_name(job_id, rec.attempt))
        log.info("cancelled %s", job_id)
        return rec.to_dict()

    def report(self, job_id: str, attempt: int, step: int | None, metrics: dict) -> None:
        with self._metrics_lock:
            self._metrics.append((job_id, attempt, self.clock(), step, metrics))

    def cluster_status(self) -> dict:
        total, free = self.ops.node_resources()
        counts: dict[str, int] = {s.value: 0 for s in JobState}
        queue: dict[int, int] = {}
        for rec in self.store.list([s for s in JobState if not s.terminal]):
            counts[rec.state.value] += 1
            if rec.state == JobState.PENDING:
                queue[rec.priority] = queue.get(rec.priority, 0) + 1
        for s in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
            counts[s.value] = self.store.count(s)

        def _sum(d: dict[str, dict[str, float]], key: str) -> float:
            return sum(r.get(key, 0.0) for r in d.values())

        return {
            "nodes": len(total),
            "gpus_total": _sum(total, "GPU"), "gpus_free": _sum(free, "GPU"),
            "cpus_total": _sum(total, "CPU"), "cpus_free": _sum(free, "CPU"),
            "jobs_by_state": counts,
            "queue_depth_by_priority": {str(k): v for k, v in sorted(queue.items(), reverse=True)},
            "coordinator_uptime_s": self.clock() - self.started_at,
        }

    # =========================================================================== loop
    def wake(self) -> None:
        self._wake.set()

    def wait(self, timeout_s: float) -> None:
        self._wake.wait(timeout_s)
        self._wake.clear()

    def reconcile_once(self) -> None:
        """One observe → decide → apply pass. Each step's exception is logged, never raised."""
        now = self.clock()
        self._guard("flush metrics", self._flush_metrics)
        with self._lock:
            try:
                jobs = self.store.list([JobState.PENDING, *ACTIVE_STATES])
            except Exception:
                log.exception("reconcile: cannot read the job table")
                return
            active_ids = {j.id for j in jobs}
            for jid in [j for j in self.attempts if j not in active_ids]:
                self._guard(f"teardown {jid}", self._teardown, self.attempts.pop(jid))
            for jid in [j for j in self._specs if j not in active_ids and j not in self.attempts]:
                del self._specs[jid]
            step = {JobState.PLACING: self._step_placing, JobState.RUNNING: self._step_running,
                    JobState.RECOVERING: self._step_recovering}
            for job in jobs:
                if job.state in step:
                    self._guard(f"{job.state.value} {job.id}", step[job.state], job, now)
            pending = [j for j in jobs if j.state == JobState.PENDING]
            if pending:
                self._guard("admission", self._admit, pending, now)
            if now - self._last_sweep > 30:
                self._last_sweep = now
                self._guard("sweep", self._sweep_placement_groups)
            if now - self._last_pin > C.PACKAGE_PIN_S / 3:
                self._last_pin = now
                self._guard("pin packages", self._pin_packages, jobs)

    def _guard(self, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except IllegalTransition as exc:  # lost a race with a user action (e.g. cancel): re-read next tick
            log.info("reconcile %s: %s", what, exc)
        except Exception:
            log.exception("reconcile step %r failed; continuing", what)

    # ----------------------------------------------------------------- steps
    def _spec(self, job: JobRecord) -> JobSpec:
        spec = self._specs.get(job.id)
        if spec is None:  # specs are immutable once stored: parse each once
            spec = self._specs[job.id] = JobSpec.model_validate(job.spec)
        return spec

    def _admit(self, pending: list[JobRecord], now: float) -> None:
        _total, free = self.ops.node_resources()
        # placement groups not created yet do not show in the free view: count them as taken
        for att in self.attempts.values():
            if not att.placed:
                spec = self._specs.get(att.job_id)
                placed = spec and place(spec.bundles(), free, spec.placement_strategy.value)
                if placed:
                    free = placed[1]
        queue = []
        for j in pending:
            spec = self._spec(j)
            queue.append(QueuedJob(j.id, j.priority, j.queued_at, tuple(spec.bundles()),
                                   spec.placement_strategy.value))
        decision = decide_admission(AdmissionContext(tuple(queue), free, C.STARVATION_THRESHOLD_S, C.AGING_S), now)
        by_id = {j.id: j for j in pending}
        for jid in decision.admit:
            self._guard(f"start {jid}", self._start_attempt, by_id[jid], JobState.PENDING, now, "admitted")

    def _start_attempt(self, job: JobRecord, src: JobState, now: float, reason: str, **fields) -> None:
        """Commit PLACING (the intent) first, then create the placement group and submit the ranks
        into it at once: Ray starts them the moment the group is placed, with no loop round trip."""
        attempt = job.attempt + 1
        self.store.transition(job.id, src, JobState.PLACING, reason=reason, now=now, attempt=attempt, **fields)
        spec = self._spec(job)
        pg = self.ops.create_pg(pg_name(job.id, attempt), spec.bundles(), spec.placement_strategy.value)
        att = self.attempts[job.id] = Attempt(job.id, attempt, pg, placing_since=now)
        self._launch(job, att)

    def _step_placing(self, job: JobRecord, now: float) -> None:
        att = self.attempts.get(job.id)
        if att is None:  # we restarted while it was placing: its ranks died with us; reuse its group
            spec = self._spec(job)
            name = pg_name(job.id, job.attempt)
            pg = self.ops.get_pg(name) or self.ops.create_pg(name, spec.bundles(), spec.placement_strategy.value)
            att = self.attempts[job.id] = Attempt(job.id, job.attempt, pg, placing_since=now)
        if att.refs is None:
            self._launch(job, att)
        if self.ops.pg_ready(att.pg):
            att.placed = True
            job = self.store.transition(job.id, JobState.PLACING, JobState.RUNNING, reason="gang placed", now=now,
                                        attempt_started_at=now, started_at=job.started_at or now)
            self._step_running(job, now)  # a short job may already be done
        elif now - att.placing_since > C.PLACEMENT_TIMEOUT_S:
            self._teardown(self.attempts.pop(job.id))
            self.store.transition(job.id, JobState.PLACING, JobState.PENDING, now=now,
                                  reason=f"placement not ready after {C.PLACEMENT_TIMEOUT_S:.0f}s; queued again")

    def _launch(self, job: JobRecord, att: Attempt) -> None:
        spec = self._spec(job)
        bundle = spec.resources.bundle()
        refs: list = []
        try:
            self._launch_ranks(job, att, spec, bundle, refs)
        except BaseException:
            self.ops.cancel(refs)  # never leave half a gang running
            raise
        att.refs = refs
        self.ops.watch(refs, self.wake)

    def _launch_ranks(self, job: JobRecord, att: Attempt, spec: JobSpec, bundle: dict, refs: list) -> None:
        for rank in range(spec.num_workers):
            launch = {
                "job_id": job.id, "attempt": att.attempt, "rank": rank, "world_size": spec.num_workers,
                "entrypoint": spec.entrypoint, "config": spec.config, "checkpoint_root": self.checkpoint_root,
                "checkpoint_policy": spec.checkpoint.model_dump(), "checkpoint_manager": self.cm,
                "coordinator": self.handle, "log_dir": str(self.log_dir),
            }
            refs.append(self.ops.launch_rank(att.pg, rank, bundle, launch, spec.runtime_env,
                                             f"{spec.name}:{job.id}:a{att.attempt}:r{rank}"))

    def _step_running(self, job: JobRecord, now: float) -> None:
        att = self.attempts.get(job.id)
        if att is None or att.refs is None:  # rank tasks died with the previous Coordinator
            self.store.transition(job.id, JobState.RUNNING, JobState.RECOVERING, now=now,
                                  reason="coordinator restarted; resuming from the latest checkpoint")
            return
        results = self.ops.poll(att.refs)
        if att.first_failure_at is None and any(
                r.status in (RankStatus.USER_ERROR, RankStatus.SYSTEM_ERROR) for r in results):
            att.first_failure_at = now
        settled = att.first_failure_at is not None and now - att.first_failure_at >= C.FAILURE_SETTLE_S
        outcome, error = classify(results, settled)
        spec = self._spec(job)
        if outcome == AttemptOutcome.RUNNING:
            if spec.max_runtime_s and job.attempt_started_at and now - job.attempt_started_at > spec.max_runtime_s:
                self._teardown(self.attempts.pop(job.id))
                self.store.transition(job.id, JobState.RUNNING, JobState.FAILED, now=now, finished_at=now,
                                      reason="timeout", error=f"exceeded max_runtime_s={spec.max_runtime_s:g}")
            return
        if outcome == AttemptOutcome.SUCCEEDED:
            result = self.ops.result(att.refs[0])
            self._teardown(self.attempts.pop(job.id))
            self._flush_metrics()
            self.store.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED, now=now, finished_at=now,
                                  reason="all ranks finished", result=result)
            log.info("job %s succeeded", job.id)
            return
        decision = decide_recovery(outcome, error, system_restarts=job.system_restarts,
                                   user_retries=job.user_retries, max_restarts=spec.max_restarts,
                                   max_user_retries=spec.max_user_retries)
        self._teardown(self.attempts.pop(job.id))
        if decision.action == Action.RESTART:
            self.store.transition(job.id, JobState.RUNNING, JobState.RECOVERING, now=now, reason=decision.reason,
                                  error=error, system_restarts=decision.system_restarts,
                                  user_retries=decision.user_retries)
            log.warning("job %s: %s", job.id, decision.reason)
        else:
            self.store.transition(job.id, JobState.RUNNING, JobState.FAILED, now=now, finished_at=now,
                                  reason=decision.reason, error=error)
            log.warning("job %s failed: %s", job.id, decision.reason)

    def _step_recovering(self, job: JobRecord, now: float) -> None:
        att = self.attempts.pop(job.id, None)
        if att is not None:
            self._teardown(att)
        else:
            self.ops.remove_pg_by_name(pg_name(job.id, job.attempt))
        self._start_attempt(job, JobState.RECOVERING, now, reason="placing again from the latest checkpoint")

    def _teardown(self, att: Attempt) -> None:
        if att.refs:
            pending = [ref for ref, r in zip(att.refs, self.ops.poll(att.refs)) if r.status == RankStatus.RUNNING]
            self.ops.cancel(pending)
        self.ops.remove_pg(att.pg)

    def _pin_packages(self, jobs: list[JobRecord]) -> None:
        """Renew the GCS pins of the uploaded packages (working_dir, py_modules) of every job not yet
        finished: Ray deletes a package once no job, actor or worker refers to it, and the Ray job
        that uploaded it (``ray job submit --working-dir``) may end long before our job is placed."""
        uris = sorted({u for j in jobs for u in gcs_uris(self._spec(j).runtime_env)})
        if uris:
            self.ops.pin_uris(uris, C.PACKAGE_PIN_S)

    def _sweep_placement_groups(self) -> None:
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


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=64)
class Coordinator:
    """Named detached actor; a thin shell over CoordinatorCore plus the reconcile thread."""

    def __init__(self, state_dir: str, checkpoint_root: str | None = None):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from raycluster.checkpoint import get_or_create_checkpoint_manager

        cm = get_or_create_checkpoint_manager(Path(state_dir))
        me = ray.get_runtime_context().current_actor
        self.core = CoordinatorCore(Path(state_dir), RayOps(), cm, me, checkpoint_root)
        self._stop = threading.Event()
        self.core._guard("startup sweep", self.core._sweep_placement_groups)
        self._thread = threading.Thread(target=self._loop, name="reconcile", daemon=True)
        self._thread.start()
        log.info("coordinator started (state dir %s)", state_dir)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.core.reconcile_once()
            except Exception:  # never let the loop die
                log.exception("reconcile pass failed")
            self.core.wait(C.RECONCILE_INTERVAL_S)

    def ping(self) -> dict:
        return {"ok": True, "uptime_s": time.time() - self.core.started_at, "pid": __import__("os").getpid()}

    def submit(self, spec: dict | str, idempotency_key: str | None = None) -> dict:
        return self.core.submit(spec, idempotency_key)

    def get(self, job_id: str) -> dict:
        return self.core.get(job_id)

    def list(self, states: list[str] | None = None, tenant: str | None = None, limit: int | None = None,
             offset: int = 0) -> list[dict]:
        return self.core.list(states, tenant, limit, offset)

    def cancel(self, job_id: str) -> dict:
        return self.core.cancel(job_id)

    def metrics(self, job_id: str, limit: int = 1000) -> list[dict]:
        return self.core.metrics(job_id, limit)

    def logs(self, job_id: str, tail_lines: int = 200) -> list[dict]:
        return self.core.logs(job_id, tail_lines)

    def report(self, job_id: str, attempt: int, step: int | None, metrics: dict) -> None:
        self.core.report(job_id, attempt, step, metrics)

    def rank_started(self, job_id: str, attempt: int, rank: int) -> None:
        """Called by rank 0 as it starts: move the job to RUNNING now rather than at the next tick."""
        self.core.wake()

    def cluster_status(self) -> dict:
        return self.core.cluster_status()


__all__ = ["Coordinator", "CoordinatorCore", "RayClusterError"]
