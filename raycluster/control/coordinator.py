"""The Coordinator actor: a named, detached, restartable thin shell over ``CoordinatorCore``.

Owns: the actor boundary (every method delegates) and the reconcile thread, which runs
``reconcile_once()`` every RECONCILE_INTERVAL_S (every PLACING_POLL_S while a gang's new placement
group may be placed) and at once when woken (a submit, a finished rank,
a placed gang), at most once per RECONCILE_MIN_GAP_S (or three times the last pass's duration,
whichever is longer: a storm of wakes costs at most a third of a core). Created by ``control/actors.py``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import ray

from raycluster import constants as C
from raycluster.control.core import CoordinatorCore
from raycluster.control.rayops import RayOps

log = logging.getLogger("raycluster.coordinator")


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=64)
class Coordinator:
    def __init__(self, state_dir: str, storage_uri: str | None = None, checkpoint_manager=None,
                 settings: dict | None = None):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from raycluster.control.handles import get_handle
        from raycluster.settings import of

        self.settings = of(settings)  # (None: a runtime started before settings were passed: the env's)
        self.settings.install()

        cm = checkpoint_manager if checkpoint_manager is not None else get_handle(C.CHECKPOINT_MANAGER_NAME)
        me = ray.get_runtime_context().current_actor
        settings_dict = self.settings.model_dump()
        self.core = CoordinatorCore(Path(state_dir), RayOps(settings_dict), cm, me, storage_uri, settings=settings_dict)
        from raycluster.store.access import TokenStore

        self.access = TokenStore(Path(state_dir) / "jobs.db")  # API tokens and the audit trail
        self.core._guard("startup sweep", self.core.housekeeping.sweep_placement_groups)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reconcile", daemon=True)
        self._thread.start()
        self.core.notifier.start()  # webhooks: delivered from the outbox by a thread of their own
        log.info("coordinator started (state dir %s, storage %s)", state_dir, self.core.storage_uri)

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.core.reconcile_once()
            except Exception:  # never let the loop die
                log.exception("reconcile pass failed")
            pass_s = time.monotonic() - started
            self.core.wait(self.core.next_wait_s())
            # passes take at most a third of the time, however often they are woken
            rest = max(C.RECONCILE_MIN_GAP_S, 3 * pass_s) - (time.monotonic() - started)
            if rest > 0:  # woken early: wakes arriving meanwhile are served by the next pass
                time.sleep(rest)

    def ping(self) -> dict:
        return {"ok": True, "uptime_s": time.time() - self.core.started_at, "pid": os.getpid()}

    def submit(self, spec: dict | str, idempotency_key: str | None = None, by: str | None = None) -> dict:
        return self.core.submit(spec, idempotency_key, by)

    def submit_many(self, items: list[dict], by: str | list[str | None] | None = None) -> list[dict]:
        return self.core.submit_many(items, by)

    def get(self, job_id: str) -> dict:
        return self.core.get(job_id)

    def list(self, states: list[str] | None = None, tenant: str | None = None, limit: int | None = None,
             offset: int = 0, newest_first: bool = False) -> list[dict]:
        return self.core.list(states, tenant, limit, offset, newest_first)

    def cancel(self, job_id: str, by: str | None = None) -> dict:
        return self.core.cancel(job_id, by)

    def metrics(self, job_id: str, limit: int = 1000) -> list[dict]:
        return self.core.metrics(job_id, limit)

    def logs(self, job_id: str, tail_lines: int = 200, since: dict[str, int] | None = None) -> list[dict]:
        return self.core.logs(job_id, tail_lines, since)

    def report(self, job_id: str, attempt: int, step: int | None, metrics: dict) -> None:
        self.core.report(job_id, attempt, step, metrics)

    def rank_started(self, job_id: str, attempt: int, rank: int) -> None:
        """Called by rank 0 as it starts: move the job to RUNNING now rather than at the next tick."""
        self.core.rank_started(job_id, attempt)

    def cost(self) -> dict:
        return self.core.cost()

    def tenants(self) -> dict:
        return self.core.tenants_view()

    def metrics_snapshot(self) -> dict:
        return self.core.metrics_snapshot()

    def heartbeat(self, sample: dict) -> None:
        self.core.health.heartbeat(sample)

    def health(self) -> list[dict]:
        return self.core.health.health_view()

    def drain(self, node_id: str, reason: str | None = None) -> dict:
        return self.core.health.drain(node_id, reason)

    def undrain(self, node_id: str) -> dict:
        return self.core.health.undrain(node_id)

    def sweep_claim(self, job_id: str, attempt: int, rank: int) -> list:
        return self.core.sweeps.claim(job_id, attempt, rank)

    def trials_done(self, job_id: str, attempt: int, rows: list[dict]) -> int:
        return self.core.sweeps.done(job_id, attempt, rows)

    def list_trials(self, job_id: str, limit: int = 1000, offset: int = 0, failed_only: bool = False) -> dict:
        return self.core.list_trials(job_id, limit, offset, failed_only)

    def create_schedule(self, spec: dict | str, idempotency_key: str | None = None) -> dict:
        return self.core.schedules.create(spec, idempotency_key)

    def list_schedules(self) -> list[dict]:
        return self.core.schedules.list()

    def get_schedule(self, schedule_id: str) -> dict:
        return self.core.schedules.get(schedule_id)

    def pause_schedule(self, schedule_id: str) -> dict:
        return self.core.schedules.pause(schedule_id)

    def resume_schedule(self, schedule_id: str) -> dict:
        return self.core.schedules.resume(schedule_id)

    def delete_schedule(self, schedule_id: str) -> dict:
        return self.core.schedules.delete(schedule_id)

    def events(self, limit: int = 100) -> list[dict]:
        return self.core.events(limit)

    def set_budget(self, usd_per_hour: float | None) -> dict:
        return self.core.set_budget(usd_per_hour)

    def budget_queue(self) -> list[dict]:
        return self.core.budget_queue()

    def budget_running(self) -> list[dict]:
        return self.core.budget_running()

    def set_budget_reasons(self, reasons: dict[str, str]) -> None:
        self.core.set_budget_reasons(reasons)

    def cluster_status(self) -> dict:
        return self.core.cluster_status()

    def rentals(self, include_released: bool = False) -> list[dict]:
        return self.core.rentals(include_released)

    def preempt(self, node: str, notice_s: float | None = None) -> dict:
        return self.core.preempt(node, notice_s)

    # ------------------------------------------------------------------ tokens and audit (store/access.py)
    def token_identity(self, sha256: str) -> dict | None:
        who = self.access.identity(sha256)
        return who.to_dict() if who is not None else None

    def tokens_create(self, name: str, tenant: str | None, role: str, by: str | None = None) -> dict:
        rec, token = self.access.create(name, tenant, role, created_by=by)
        return {**rec, "token": token}

    def tokens_list(self, include_revoked: bool = False) -> list[dict]:
        return self.access.list(include_revoked)

    def tokens_rotate(self, token_id: str) -> dict:
        rec, token = self.access.rotate(token_id)
        return {**rec, "token": token}

    def tokens_revoke(self, token_id: str) -> dict:
        return self.access.revoke(token_id)

    def audit_many(self, entries: list) -> int:
        """Record API calls: each (who as a dict, action, target, HTTP status)."""
        from raycluster.policy.access import Identity

        self.access.audit_many([(Identity.from_dict(who), action, target, status)
                                for who, action, target, status in entries])
        return len(entries)

    def audit_trail(self, limit: int = 100, tenant: str | None = None) -> list[dict]:
        return self.access.audit_trail(limit, tenant)

    def checkpoint_now(self, rental_id: str, reason: str, cause: str = "budget", ray_node_id: str | None = None) -> dict:
        return self.core.checkpoint_now(rental_id, reason, cause, ray_node_id)

    def checkpoint_wanted(self, job_id: str, attempt: int) -> bool:
        return self.core.evacuations.checkpoint_wanted(job_id, attempt)

    def checkpoint_pending(self, asked: dict) -> list[str]:
        return self.core.checkpoint_pending(asked)

    def move_off(self, rental_id: str, cause: str, reason: str, ray_node_id: str | None = None) -> list[str]:
        return self.core.move_off(rental_id, cause, reason, ray_node_id)
