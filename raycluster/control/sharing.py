"""The Coordinator's sharing of one cluster between teams: tenants' quotas and fair share, and
preemption of lower-priority jobs. The seams between ``policy.tenants`` / ``policy.preemption`` (pure
decisions) and the control loop (``control/reconcile.py``), as a mixin of ``Reconciler``.

Owns (in memory, all rebuilt from SQLite and the job table after a restart):
* the tenants config as read from its file (``store.tenants.TenantsFile``), what each tenant's
  holding jobs count against its quota (``QuotaView`` per admission pass), and each tenant's decayed
  usage (``tenant_usage``, saved every ``FAIRSHARE_INTERVAL_S``) with the fair-share boost of its
  queued jobs — a changed boost re-keys that tenant's queued jobs in the ``AdmissionQueue``;
* preemptions in flight: a victim asked to checkpoint now (``Coordinator.checkpoint_now``'s
  mechanism: its rank 0's ``ctx.should_checkpoint`` answers yes once), stopped and queued again
  (``Action.PREEMPT``) once it has a newer complete checkpoint or after ``PREEMPT_CHECKPOINT_WAIT_S``.
  While one is in flight no other is decided, so a blocked job never takes more victims than it needs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from raycluster import constants as C
from raycluster.policy.admission import QueuedJob
from raycluster.policy.preemption import PreemptionContext, RunningGang, Waiter, decide_preemption
from raycluster.policy.steps import preempt_step
from raycluster.policy.tenants import (Demand, QuotaView, billing_units, boost_s, decay_usage,
                                       fair_share_factors, tenant_of)
from raycluster.store.lifecycle import Cause, JobState
from raycluster.store.tenants import TenantsFile, TenantUsageStore

log = logging.getLogger("raycluster.coordinator")


@dataclass
class Preemption:
    job_id: str
    attempt: int
    for_job: str
    reason: str
    asked_at: float
    before_step: int | None


class SharingMixin:
    """Tenants and preemption for ``Reconciler`` (uses its store, queue, specs, attempts, ops)."""

    def _init_sharing(self) -> None:
        self.tenants = TenantsFile(self.state_dir)
        self.tenant_usage = TenantUsageStore(self.state_dir / "jobs.db")
        loaded = self.tenant_usage.load()
        self._usage: dict[str, float] = {t: u for t, (u, _at) in loaded.items()}
        self._usage_at: float | None = max((at for _u, at in loaded.values()), default=None)
        self._boosts: dict[str, float] = {}
        self.fair_share: dict[str, float] = {}
        self._quota_key: tuple | None = None
        self._blocked: str | None = None
        self.preempting: dict[str, Preemption] = {}
        self._ckpt_wanted: dict[tuple[str, int], str] = {}  # (job, attempt) -> why it should checkpoint now
        self._last_preempt_check = 0.0
        self._preempt_quiet_until: dict[str, float] = {}  # waiter -> no new victims for it before then

    # ------------------------------------------------------------------ tenants
    def _queued(self, rec, spec) -> QueuedJob:
        return QueuedJob(rec.id, rec.priority, rec.queued_at, tuple(self._bundles(spec)), spec.placement_strategy.value,
                         tenant=rec.tenant, boost_s=self._boost_of(tenant_of(rec.tenant)))

    def _boost_of(self, tenant: str) -> float:
        """The tenant's fair-share boost; one not seen by a fair-share pass yet gets its factor now
        (a new tenant, with no usage, the most), not 0 until the next pass."""
        boost = self._boosts.get(tenant)
        if boost is None:
            window = C.FAIRSHARE_WINDOW_S
            if window <= 0:
                return 0.0
            config = self.tenants.current()
            names = set(self._boosts) | set(self._usage) | {tenant}
            shares = {t: config.quota(None if t == "default" else t).shares for t in names}
            boost = self._boosts[tenant] = boost_s(fair_share_factors(self._usage, shares)[tenant], window)
        return boost

    def _holding(self) -> dict[str, Demand]:
        """What each tenant's jobs that hold (or are about to hold) resources count against its quota."""
        used: dict[str, Demand] = {}
        for rec in self._active.values():
            t = tenant_of(rec.tenant)
            used[t] = used.get(t, Demand(jobs=0)) + Demand.of_bundles(self._bundles(self._spec(rec)))
        return used

    def _quota_view(self) -> QuotaView | None:
        config = self.tenants.current()
        if not config.has_quotas:
            self._quota_key = None
            return None
        used = self._holding()
        key = (self.tenants.version, tuple(sorted(used.items())))
        if key != self._quota_key:  # the last pass's decision may no longer hold
            self._quota_key = key
            self.queue.forget()
        return QuotaView(config, used)

    def _fair_share_pass(self, now: float) -> None:
        """Decay and add each tenant's usage since the last update, save it, and re-key the queued
        jobs of tenants whose fair-share boost changed."""
        rates: dict[str, float] = {}
        for rec in self._active.values():
            t = tenant_of(rec.tenant)
            rates[t] = rates.get(t, 0.0) + billing_units(self._bundles(self._spec(rec)), C.FAIRSHARE_CPU_WEIGHT)
        dt = 0.0 if self._usage_at is None else max(0.0, now - self._usage_at)
        for t in set(self._usage) | set(rates):
            self._usage[t] = decay_usage(self._usage.get(t, 0.0), rates.get(t, 0.0), dt, C.FAIRSHARE_HALF_LIFE_S)
        self._usage_at = now
        self.tenant_usage.save(self._usage, now)
        config = self.tenants.current()
        # every tenant that wants the cluster or used it lately (usage decays: it drops out on its own)
        wanting = ({tenant_of(j.tenant) for j in self.queue.ordered()} | set(rates)
                   | {t for t, u in self._usage.items() if u > 1e-6})
        shares = {t: config.quota(None if t == "default" else t).shares for t in wanting}
        self.fair_share = fair_share_factors(self._usage, shares)
        window = C.FAIRSHARE_WINDOW_S
        boosts = {t: boost_s(f, window) for t, f in self.fair_share.items()} if window > 0 else {}
        moved = {t for t in set(boosts) | set(self._boosts) if boosts.get(t, 0.0) != self._boosts.get(t, 0.0)}
        self._boosts = boosts
        if moved:
            for job in self.queue.ordered():
                if tenant_of(job.tenant) in moved:
                    rec = self._pending.get(job.job_id)
                    if rec is not None:
                        self.queue.put(self._queued(rec, self._spec(rec)))

    def tenants_view(self) -> dict:
        """Each tenant's quota, what it holds now, its decayed usage and fair-share factor."""
        config = self.tenants.current()
        with self._lock:
            used = self._holding()
            queued: dict[str, int] = {}
            for job in self.queue.ordered():
                queued[tenant_of(job.tenant)] = queued.get(tenant_of(job.tenant), 0) + 1
        names = sorted(set(config.tenants) | set(used) | set(queued) | set(self._usage))
        out = []
        for t in names:
            q = config.quota(None if t == "default" else t)
            u = used.get(t, Demand(jobs=0))
            out.append({"tenant": t, "listed": t in config.tenants,
                        "quota": q.model_dump(mode="json", exclude_none=True),
                        "holding": {"gpus": u.gpus, "cpus": u.cpus, "memory_mb": u.memory_mb, "jobs": u.jobs},
                        "queued": queued.get(t, 0), "usage": round(self._usage.get(t, 0.0), 3),
                        "fair_share": round(self.fair_share.get(t, 1.0), 4)})
        return {"file": str(self.tenants.path), "error": self.tenants.error, "tenants": out}

    # ------------------------------------------------------------------ preemption
    def _preempt_pass(self, now: float) -> None:
        """Carry on the preemptions in flight; when none is, maybe choose victims for the blocked job."""
        if now - self._last_preempt_check < C.PREEMPT_CHECK_INTERVAL_S:
            return
        self._last_preempt_check = now
        for jid, p in list(self.preempting.items()):
            self._guard(f"preempt {jid}", self._advance_preemption, p, now)
        if self.preempting or C.PREEMPT_AFTER_S <= 0:
            return
        blocked = self._pending.get(self._blocked) if self._blocked else None
        if blocked is None or now - blocked.queued_at < C.PREEMPT_AFTER_S:
            return
        if now < self._preempt_quiet_until.get(blocked.id, 0.0):
            return  # its victims' room is being given back: let admission place it first
        if self.ledger.elastic and blocked.id not in self.budget_reasons:
            return  # the autoscaler may still rent room for it
        spec = self._spec(blocked)
        running = self._running_gangs(now, below=blocked.priority)
        if not running:
            return
        _total, free = self.nodes.totals_and_free(0.0)
        ctx = PreemptionContext(Waiter(blocked.id, blocked.priority, tuple(self._bundles(spec)),
                                       spec.placement_strategy.value, blocked.queued_at),
                                tuple(running), free, C.PREEMPT_AFTER_S, C.PREEMPT_MAX_PER_HOUR)
        decision = decide_preemption(ctx, now)
        if not decision.victims:
            log.debug("no preemption: %s", decision.reason)
            return
        for jid in decision.victims:
            rec = self._active[jid]
            self.preempting[jid] = Preemption(jid, rec.attempt, blocked.id, decision.reason, now,
                                              self._newest_step(jid))
            self._ckpt_wanted[(jid, rec.attempt)] = decision.reason
        log.info("preempting %s for %s: asked to checkpoint now", ", ".join(decision.victims), blocked.id)

    def _running_gangs(self, now: float, below: int) -> list[RunningGang]:
        recs = [r for r in self._active.values() if r.state == JobState.RUNNING and r.priority < below
                and self._spec(r).preemptible and (a := self.attempts.get(r.id)) is not None and a.placed]
        if not recs:
            return []
        recent = self.store.count_transitions([r.id for r in recs], Cause.PREEMPTED, now - 3600)
        out = []
        for rec in recs:
            att = self.attempts[rec.id]
            nodes = att.nodes or self.ops.pg_nodes(att.pg)  # (noted when it was placed)
            bundle = self._bundles(self._spec(rec))
            ckpt_at = self._newest_checkpoint_at(rec.id)
            since = max(x for x in (rec.attempt_started_at or 0.0, ckpt_at or 0.0))
            out.append(RunningGang(rec.id, rec.priority, tuple(zip(nodes, bundle)), True,
                                   max(0.0, now - since) if since else 0.0, recent.get(rec.id, 0)))
        return out

    def _advance_preemption(self, p: Preemption, now: float) -> None:
        rec = self._active.get(p.job_id)
        if rec is None or rec.state != JobState.RUNNING or rec.attempt != p.attempt:
            self.preempting.pop(p.job_id, None)  # it ended (or moved on) by itself
            self._ckpt_wanted.pop((p.job_id, p.attempt), None)
            return
        step = self._newest_step(p.job_id)
        saved = step is not None and (p.before_step is None or step > p.before_step)
        if not saved and now - p.asked_at < C.PREEMPT_CHECKPOINT_WAIT_S:
            return
        self.preempting.pop(p.job_id, None)
        self._ckpt_wanted.pop((p.job_id, p.attempt), None)
        where = f"resumes from its checkpoint at step {step}" if step is not None else "no checkpoint: starts over"
        if not saved:
            where += f" (no newer checkpoint within {C.PREEMPT_CHECKPOINT_WAIT_S:.0f} s)"
        self.apply(rec, preempt_step(rec, f"{p.reason}; {where}", rec.preempted + 1), now)
        self.queue.forget()
        self._preempt_quiet_until = {w: t for w, t in self._preempt_quiet_until.items() if t > now}
        self._preempt_quiet_until[p.for_job] = now + C.PREEMPT_GRACE_S

    def _newest_step(self, job_id: str) -> int | None:
        if self.cm is None:
            return None
        import ray

        found = ray.get(self.cm.candidates.remote(job_id), timeout=30)
        return int(found[0]["step"]) if found else None

    def _newest_checkpoint_at(self, job_id: str) -> float | None:
        if self.cm is None:
            return None
        import ray

        found = ray.get(self.cm.candidates.remote(job_id), timeout=30)
        return float(found[0].get("created_at") or 0.0) if found else None
