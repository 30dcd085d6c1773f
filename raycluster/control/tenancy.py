"""Sharing one cluster between teams, a part of the Coordinator's loop: quotas, budgets and fair share.
The seam between ``policy.tenants`` (pure decisions) and the loop (``control/reconcile.py``).

Owns (rebuilt from SQLite and the job table after a restart):
* the tenants config as read from its file (``store.tenants.TenantsFile``) and what each tenant's
  holding jobs count against its quota (``quota_view``, per admission pass: a changed view tells
  the loop the queue's last decision may no longer hold);
* what each tenant's jobs cost (``spend``: read from the cost ledger at most every
  ``TENANT_SPEND_INTERVAL_S``, when a tenant has a budget) for its budgets in the quota view, and
  the budget alerts (80 % and 100 % of a day's or month's budget: a ``tenant_budget`` webhook
  notification, once per tenant, period and level, recorded in SQLite);
* each tenant's decayed usage (``TenantUsageStore``, saved every ``FAIRSHARE_INTERVAL_S`` by
  ``tick``) and the fair-share boost of its queued jobs (``boost_of``); ``tick`` returns the
  tenants whose boost changed, whose queued jobs the loop re-keys.

What it is handed: the gangs that hold (or are about to hold) resources, as (tenant, bundles)
pairs, the queued jobs' tenants, the ledger's ``tenant_spend``, the rented node types' prices and a
way to emit a notification — never the loop itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable

from raycluster import constants as C
from raycluster.policy.tenants import (Demand, QuotaView, TenantSpend, billing_units, boost_s, budget_alerts,
                                       budget_reason, decay_usage, fair_share_factors, tenant_of)
from raycluster.store.tenants import TenantsFile, TenantUsageStore

log = logging.getLogger("raycluster.coordinator")
Gangs = Iterable[tuple[str | None, list[dict[str, float]]]]  # (tenant, bundles) of each holding gang


class Tenancy:
    def __init__(self, state_dir: Path, clock: Callable[[], float], *,
                 spend_of: Callable[[float], dict[str, TenantSpend]] = lambda now: {},
                 prices: tuple[tuple[float, float, float], ...] = (),
                 notify: Callable[..., object] = lambda *a, **k: 0):
        self.tenants = TenantsFile(state_dir)
        self._spend_of, self.prices, self._notify = spend_of, tuple(prices), notify
        self.spend: dict[str, TenantSpend] = {}
        self._spend_at: float | None = None
        self.usage_store = TenantUsageStore(Path(state_dir) / "jobs.db")
        loaded = self.usage_store.load()
        self.usage: dict[str, float] = {t: u for t, (u, _at) in loaded.items()}
        self._usage_at: float | None = max((at for _u, at in loaded.values()), default=None)
        self._boosts: dict[str, float] = {}
        self.fair_share: dict[str, float] = {}
        self._quota_key: tuple | None = None
        self.clock = clock

    def config(self):
        return self.tenants.current()

    @staticmethod
    def holding(gangs: Gangs) -> dict[str, Demand]:
        """What each tenant's holding gangs count against its quota."""
        used: dict[str, Demand] = {}
        for tenant, bundles in gangs:
            t = tenant_of(tenant)
            used[t] = used.get(t, Demand(jobs=0)) + Demand.of_bundles(bundles)
        return used

    def quota_view(self, gangs: Gangs) -> tuple[QuotaView | None, bool]:
        """(the quota view for admission — None when no tenant has a quota —, whether it changed
        since the last call: the queue's last decision may then no longer hold)."""
        config = self.tenants.current()
        if not config.has_quotas:
            self._quota_key = None
            return None, False
        used = self.holding(gangs)
        if config.has_budgets:
            self.refresh_spend(self.clock())
        key = (self.tenants.version, tuple(sorted(used.items())), tuple(sorted(self.spend.items())))
        changed = key != self._quota_key
        self._quota_key = key
        return QuotaView(config, used, dict(self.spend), self.prices), changed

    def refresh_spend(self, now: float, force: bool = False) -> None:
        """Read what each tenant's jobs cost (at most every ``TENANT_SPEND_INTERVAL_S``) and fire the
        budget alerts it crossed; an unreadable ledger keeps the last reading (logged)."""
        if not force and self._spend_at is not None and now - self._spend_at < C.TENANT_SPEND_INTERVAL_S:
            return
        self._spend_at = now
        try:
            self.spend = self._spend_of(now)
        except Exception:
            log.exception("tenants' spend: cannot read the cost ledger (the last reading holds)")
            return
        config = self.tenants.current()
        for tenant, period, level, message in budget_alerts(config, self.spend, now, self.usage_store.alerts_fired()):
            if self.usage_store.alert_fired(tenant, period, level, now):
                self._notify("tenant_budget", {"tenant": tenant, "period": period, "level": f"{level:.0%}"},
                             f"tenant {tenant} at {level:.0%} of its budget", message)

    def boost_of(self, tenant: str | None) -> float:
        """The tenant's fair-share boost; one not seen by a fair-share pass yet gets its factor now
        (a new tenant, with no usage, the most), not 0 until the next pass."""
        tenant = tenant_of(tenant)
        boost = self._boosts.get(tenant)
        if boost is None:
            window = C.FAIRSHARE_WINDOW_S
            if window <= 0:
                return 0.0
            config = self.tenants.current()
            names = set(self._boosts) | set(self.usage) | {tenant}
            shares = {t: config.quota(None if t == "default" else t).shares for t in names}
            boost = self._boosts[tenant] = boost_s(fair_share_factors(self.usage, shares)[tenant], window)
        return boost

    def tick(self, now: float, gangs: Gangs, queued_tenants: Iterable[str | None]) -> set[str]:
        """Decay and add each tenant's usage since the last update and save it; the tenants whose
        fair-share boost changed (their queued jobs are re-keyed by the loop)."""
        rates: dict[str, float] = {}
        for tenant, bundles in gangs:
            t = tenant_of(tenant)
            rates[t] = rates.get(t, 0.0) + billing_units(bundles, C.FAIRSHARE_CPU_WEIGHT)
        dt = 0.0 if self._usage_at is None else max(0.0, now - self._usage_at)
        for t in set(self.usage) | set(rates):
            self.usage[t] = decay_usage(self.usage.get(t, 0.0), rates.get(t, 0.0), dt, C.FAIRSHARE_HALF_LIFE_S)
        self._usage_at = now
        self.usage_store.save(self.usage, now)
        config = self.tenants.current()
        # every tenant that wants the cluster or used it lately (usage decays: it drops out on its own)
        wanting = ({tenant_of(t) for t in queued_tenants} | set(rates)
                   | {t for t, u in self.usage.items() if u > 1e-6})
        shares = {t: config.quota(None if t == "default" else t).shares for t in wanting}
        self.fair_share = fair_share_factors(self.usage, shares)
        window = C.FAIRSHARE_WINDOW_S
        boosts = {t: boost_s(f, window) for t, f in self.fair_share.items()} if window > 0 else {}
        moved = {t for t in set(boosts) | set(self._boosts) if boosts.get(t, 0.0) != self._boosts.get(t, 0.0)}
        self._boosts = boosts
        return moved

    def view(self, gangs: Gangs, queued_tenants: Iterable[str | None]) -> dict:
        """Each tenant's quota, what it holds now, its decayed usage and fair-share factor."""
        config = self.tenants.current()
        used = self.holding(gangs)
        queued: dict[str, int] = {}
        for tenant in queued_tenants:
            queued[tenant_of(tenant)] = queued.get(tenant_of(tenant), 0) + 1
        if config.has_budgets:
            self.refresh_spend(self.clock())
        names = sorted(set(config.tenants) | set(used) | set(queued) | set(self.usage) | set(self.spend))
        out = []
        for t in names:
            q = config.quota(None if t == "default" else t)
            u = used.get(t, Demand(jobs=0))
            s = self.spend.get(t, TenantSpend())
            out.append({"tenant": t, "listed": t in config.tenants,
                        "quota": q.model_dump(mode="json", exclude_none=True),
                        "spend": {"usd_per_hour": round(s.usd_per_hour, 6), "today_usd": round(s.today_usd, 6),
                                  "month_usd": round(s.month_usd, 6)},
                        "budget_waiting": budget_reason(t, q, s),
                        "holding": {"gpus": u.gpus, "cpus": u.cpus, "memory_mb": u.memory_mb, "jobs": u.jobs},
                        "queued": queued.get(t, 0), "usage": round(self.usage.get(t, 0.0), 3),
                        "fair_share": round(self.fair_share.get(t, 1.0), 4)})
        return {"file": str(self.tenants.path), "error": self.tenants.error, "tenants": out}
