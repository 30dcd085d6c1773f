"""The Coordinator's logic: the durable priority queue and every call users make on it.

Owns: ``CoordinatorCore`` — submit (validation, entrypoint check, feasibility against the
cluster's node totals, idempotency), get/list/cancel, metric reports (buffered, flushed by the
loop), rank-log tails and cluster status — on top of ``Reconciler`` (the control loop, see
``control/reconcile.py``). A plain class, driven by any ``GangOps``: the unit tests run it with a
fake, the ``Coordinator`` actor (``control/coordinator.py``) with the real RayOps.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from typing import Any

from raycluster import constants as C
from raycluster.control.rayops import pg_name
from raycluster.control.reconcile import Reconciler, gcs_uris
from raycluster.errors import EntrypointImportError, IllegalTransition, InfeasibleJob
from raycluster.policy.admission import infeasible_reason
from raycluster.rank.logs import read_rank_logs
from raycluster.spec import JobSpec, parse_spec
from raycluster.store.lifecycle import Cause, JobState
from raycluster.util.ttlcache import TTLCache

log = logging.getLogger("raycluster.coordinator")


class CoordinatorCore(Reconciler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._ep_checked = TTLCache(self.clock)

    # ------------------------------------------------------------------ submit
    def submit(self, spec_data: dict | str, idempotency_key: str | None = None) -> dict:
        spec = parse_spec(spec_data)
        if idempotency_key:
            existing = self.store.find_by_idempotency_key(idempotency_key)
            if existing is not None:
                return existing.to_dict()
        self._check_entrypoint(spec)
        total, _free = self.nodes.totals_and_free(C.NODE_TOTALS_TTL_S)
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
        self.wake()
        return rec.to_dict()

    def _check_entrypoint(self, spec: JobSpec) -> None:
        key = spec.entrypoint + "|" + json.dumps(spec.runtime_env, sort_keys=True)
        if self._ep_checked.fresh(key, C.ENTRYPOINT_CHECK_CACHE_S):
            return
        reason = self.ops.check_entrypoint(spec.entrypoint, spec.runtime_env, C.ENTRYPOINT_CHECK_TIMEOUT_S)
        if reason:
            raise EntrypointImportError(f"entrypoint {spec.entrypoint!r} cannot be used: {reason}",
                                        field="entrypoint")
        self._ep_checked.put(key, True)

    # ------------------------------------------------------------------ reads
    def get(self, job_id: str) -> dict:
        out = self.store.get(job_id).to_dict()
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
        """The last ``tail_lines`` lines of every rank log of the job (attempts, then ranks)."""
        self.store.get(job_id)  # JobNotFound
        return read_rank_logs(self.log_dir, job_id, tail_lines)

    def cluster_status(self) -> dict:
        total, free = self.nodes.totals_and_free(0.0)

        def _sum(d: dict[str, dict[str, float]], key: str) -> float:
            return sum(r.get(key, 0.0) for r in d.values())

        queue = self.store.queue_depth_by_priority()
        return {
            "nodes": len(total),
            "gpus_total": _sum(total, "GPU"), "gpus_free": _sum(free, "GPU"),
            "cpus_total": _sum(total, "CPU"), "cpus_free": _sum(free, "CPU"),
            "jobs_by_state": self.store.count_by_state(),
            "queue_depth_by_priority": {str(k): v for k, v in sorted(queue.items(), reverse=True)},
            "coordinator_uptime_s": self.clock() - self.started_at,
        }

    # ------------------------------------------------------------------ writes
    def cancel(self, job_id: str) -> dict:
        with self._lock:
            rec = self.store.get(job_id)
            if rec.state.terminal:
                raise IllegalTransition(f"job {job_id} is already {rec.state.value}; nothing to cancel")
            rec = self.store.transition(job_id, rec.state, JobState.CANCELLED, cause=Cause.CANCELLED,
                                        reason="cancelled by user", finished_at=self.clock())
            att = self.attempts.pop(job_id, None)
            if att is not None:
                self._teardown(att)
            else:
                self.ops.remove_pg_by_name(pg_name(job_id, rec.attempt))
        log.info("cancelled %s", job_id)
        return rec.to_dict()

    def report(self, job_id: str, attempt: int, step: int | None, metrics: dict[str, Any]) -> None:
        with self._metrics_lock:
            self._metrics.append((job_id, attempt, self.clock(), step, metrics))
