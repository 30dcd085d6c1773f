"""Tenants: quotas, per-job limits and fair share between teams. Pure functions, no Ray.

Owns: the tenants config (``configs/tenants.yaml``: ``TenantsConfig``), what a running job counts
against its tenant's quota (``Demand``), the quota check admission makes for every job it would
start (``QuotaView``), the per-job limits checked at submit (``check_job_limits``), and the fair-share
formula.

**Quotas** (per tenant, any subset; unlisted tenants get ``default``'s, a job with no tenant is tenant
``default``): ``max_gpus``, ``max_cpus``, ``max_memory_mb`` (summed over the bundles of its jobs that
hold resources: PLACING, RUNNING, RECOVERING) and ``max_jobs`` (such jobs at once). A job that would
pass one waits with the reason ``tenant quota team-a 8/8 GPU`` (what it holds / its quota;
``raycluster status`` shows ``waiting: tenant quota team-a 8/8 GPU``):
it is not "blocked" for the queue (it reserves no capacity, lower jobs of other tenants go on).

**Budgets** (per tenant, on an elastic cluster: what its jobs' shares of rented nodes cost, from the
cost ledger): ``max_usd_per_hour`` (its committed share of rented nodes now, plus the job's at the
cheapest price a node of the cluster's types offers) and ``budget_usd: {day, month}`` (spend so far
in the UTC day or month). A job over one waits with the reason ``tenant budget team-a 4.10/4.00 USD
today`` and, like a quota-held job, no node is rented for it; the cluster-wide cap holds as ever.
``budget_alerts`` says when a tenant's spend crosses 80 % and 100 % of a budget (one webhook alert
each per period).

**Per-job limits** (``per_job``: ``max_workers``, ``max_gpus`` (whole gang), ``max_cpus``,
``max_runtime_s``, ``min_priority``/``max_priority``): a job over one is refused at submit naming the
spec field (HTTP 422, exit 2).

**Fair share** (Slurm's classic fair-share factor): each tenant's usage ``U`` is the resources its
jobs hold, in billing units per second (``gpus + cpus * FAIRSHARE_CPU_WEIGHT`` per bundle), decayed
with a half-life (``usage' = usage * 2^(-dt/half_life) + rate * dt``). With ``u = U / sum(U)`` (its
share of the recent usage) and ``s = shares / sum(shares)`` (its share of the cluster, over the tenants
that used or want it), the factor is ``F = 2^(-u/s)`` — 1 for a tenant that used nothing, 0.5 for one
that used exactly its share, towards 0 for one that took all. A queued job is ordered as if it had
been queued ``F * FAIRSHARE_WINDOW_S`` earlier: among jobs of equal priority, a team that used less
than its share goes first, so one team's stream of jobs cannot keep another's out; priority still
comes first (with aging, a window of ``W`` seconds is worth ``W / AGING_S`` priority levels).
"""

from __future__ import annotations

import calendar
import math
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from raycluster.policy.cost import node_share

DEFAULT_TENANT = "default"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PerJobLimits(_Strict):
    max_workers: int | None = Field(None, ge=1, description="num_workers of one job, at most")
    max_gpus: float | None = Field(None, ge=0, description="GPUs of one job's whole gang, at most")
    max_cpus: float | None = Field(None, gt=0, description="CPUs of one job's whole gang, at most")
    max_runtime_s: float | None = Field(None, gt=0, description="max_runtime_s, at most (and then required)")
    min_priority: int | None = Field(None, description="priority, at least")
    max_priority: int | None = Field(None, description="priority, at most")


class TenantBudget(_Strict):
    day: float | None = Field(None, ge=0, description="USD its jobs may cost per UTC day")
    month: float | None = Field(None, ge=0, description="USD its jobs may cost per UTC month")


class TenantQuota(_Strict):
    max_gpus: float | None = Field(None, ge=0)
    max_cpus: float | None = Field(None, ge=0)
    max_memory_mb: float | None = Field(None, ge=0)
    max_jobs: int | None = Field(None, ge=0, description="jobs holding resources at once")
    shares: float = Field(1.0, gt=0, description="its fair share of the cluster, relative to the others'")
    max_usd_per_hour: float | None = Field(None, ge=0, description="its committed share of rented nodes, at most")
    budget_usd: TenantBudget = Field(default_factory=TenantBudget, description="USD per day / month, at most")
    per_job: PerJobLimits = Field(default_factory=PerJobLimits)

    @property
    def has_budget(self) -> bool:
        return self.max_usd_per_hour is not None or self.budget_usd.day is not None or self.budget_usd.month is not None


class TenantsConfig(_Strict):
    tenants: dict[str, TenantQuota] = Field(default_factory=dict)
    default: TenantQuota = Field(default_factory=TenantQuota, description="for tenants not listed")

    @model_validator(mode="after")
    def _names(self):
        for name in self.tenants:
            if not name or len(name) > 64:
                raise ValueError(f"tenant name {name!r} must be 1-64 characters")
        return self

    def quota(self, tenant: str | None) -> TenantQuota:
        return self.tenants.get(tenant or DEFAULT_TENANT, self.default)

    @property
    def has_quotas(self) -> bool:
        return any(q.max_gpus is not None or q.max_cpus is not None or q.max_memory_mb is not None
                   or q.max_jobs is not None for q in [*self.tenants.values(), self.default]) or self.has_budgets

    @property
    def has_budgets(self) -> bool:
        return any(q.has_budget for q in [*self.tenants.values(), self.default])


def parse_tenants(data: Any, where: str = "tenants config") -> TenantsConfig:
    """Validate a tenants config (a mapping as read from YAML); ValueError naming the field."""
    if data is None:
        return TenantsConfig()
    if not isinstance(data, dict):
        raise ValueError(f"{where}: must be a mapping with 'tenants' and 'default', got {type(data).__name__}")
    try:
        return TenantsConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise ValueError(f"{where}: {loc}: {msg}") from None


def tenant_of(tenant: str | None) -> str:
    return tenant or DEFAULT_TENANT


# ---------------------------------------------------------------------------------------------- quotas
@dataclass(frozen=True)
class Demand:
    """What one job holds (or would hold) against its tenant's quota."""

    gpus: float = 0.0
    cpus: float = 0.0
    memory_mb: float = 0.0
    jobs: int = 1

    @classmethod
    def of_bundles(cls, bundles) -> "Demand":
        return cls(gpus=sum(b.get("GPU", 0.0) for b in bundles), cpus=sum(b.get("CPU", 0.0) for b in bundles),
                   memory_mb=sum(b.get("memory", 0.0) for b in bundles) / (1024 * 1024))

    def __add__(self, other: "Demand") -> "Demand":
        return Demand(self.gpus + other.gpus, self.cpus + other.cpus, self.memory_mb + other.memory_mb,
                      self.jobs + other.jobs)


_DIMENSIONS = (("gpus", "max_gpus", "GPU"), ("cpus", "max_cpus", "CPU"), ("memory_mb", "max_memory_mb", "MB memory"),
               ("jobs", "max_jobs", "jobs"))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


QUOTA_REASON_PREFIX = "tenant quota "
BUDGET_REASON_PREFIX = "tenant budget "


def held_by_quota(waiting: str | None) -> bool:
    """Whether a waiting reason is a tenant quota's or budget's (no node is rented for such a job)."""
    return bool(waiting) and waiting.startswith((QUOTA_REASON_PREFIX, BUDGET_REASON_PREFIX))


def quota_reason(tenant: str, quota: TenantQuota, used: Demand, job: Demand) -> str | None:
    """Why a job of ``tenant`` cannot start now under its quota (None: it can)."""
    for attr, limit_attr, unit in _DIMENSIONS:
        limit = getattr(quota, limit_attr)
        if limit is not None and getattr(used, attr) + getattr(job, attr) > limit + 1e-9:
            return f"{QUOTA_REASON_PREFIX}{tenant} {_num(getattr(used, attr))}/{_num(limit)} {unit}"
    return None


# ---------------------------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class TenantSpend:
    """What a tenant's jobs cost: their shares of rented nodes now, and so far this UTC day and month."""

    usd_per_hour: float = 0.0
    today_usd: float = 0.0
    month_usd: float = 0.0


def _usd(x: float) -> str:
    return f"{x:.2f}" if x == 0 or abs(x) >= 0.1 else f"{x:.2g}"


def budget_reason(tenant: str, quota: TenantQuota, spend: TenantSpend, job_usd_per_hour: float = 0.0) -> str | None:
    """Why a job of ``tenant`` cannot start now under its budgets (None: it can): a day or month
    budget spent, or its committed rate plus the job's (estimated) at or over ``max_usd_per_hour``."""
    b = quota.budget_usd
    for limit, spent, when in ((b.day, spend.today_usd, "today"), (b.month, spend.month_usd, "this month")):
        if limit is not None and spent >= limit - 1e-12:
            return f"{BUDGET_REASON_PREFIX}{tenant} {_usd(spent)}/{_usd(limit)} USD {when}"
    cap = quota.max_usd_per_hour
    if cap is not None and (spend.usd_per_hour >= cap - 1e-12 or spend.usd_per_hour + job_usd_per_hour > cap + 1e-9):
        return f"{BUDGET_REASON_PREFIX}{tenant} {_usd(spend.usd_per_hour)}/{_usd(cap)} USD/hour"
    return None


def job_usd_per_hour(demand: Demand, prices: tuple[tuple[float, float, float], ...]) -> float:
    """What a job holding ``demand`` costs per hour on rented nodes, at the cheapest of ``prices``
    ((USD/hour, GPUs, CPUs) of each node type; its share of a node is its GPUs over the node's, or
    its CPUs for a job without GPUs). 0 when there are no prices (nothing is rented)."""
    best = None
    for usd, gpus, cpus in prices:
        if demand.gpus > 0 and gpus <= 0:
            continue  # a GPU job is never placed there
        rate = node_share(demand.gpus, demand.cpus, gpus, cpus) * usd
        best = rate if best is None else min(best, rate)
    return best or 0.0


ALERT_LEVELS = (0.8, 1.0)


def period_keys(now: float) -> dict[str, str]:
    """The UTC day and month ``now`` falls in, as keys an alert fires once per."""
    t = time.gmtime(now)
    return {"day": f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}", "month": f"{t.tm_year:04d}-{t.tm_mon:02d}"}


def period_starts(now: float) -> tuple[float, float]:
    """(the UTC day's start, the UTC month's start) of ``now``."""
    t = time.gmtime(now)
    return (float(calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))),
            float(calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))))


def budget_alerts(config: TenantsConfig, spend: dict[str, TenantSpend], now: float,
                  fired: set[tuple[str, str, float]]) -> list[tuple[str, str, float, str]]:
    """The budget crossings not alerted yet: (tenant, period key, level, message) for each tenant
    whose spend this day/month reached 80 % or 100 % of its budget (``fired``: (tenant, period key,
    level) already alerted; only the highest level reached is new when both are)."""
    keys = period_keys(now)
    out = []
    for t, s in sorted(spend.items()):
        b = config.quota(None if t == DEFAULT_TENANT else t).budget_usd
        for period, limit, spent in (("day", b.day, s.today_usd), ("month", b.month, s.month_usd)):
            if not limit:
                continue
            reached = [lv for lv in ALERT_LEVELS if spent >= lv * limit - 1e-12]
            if not reached:
                continue
            key = f"{period} {keys[period]}"
            level = reached[-1]
            if (t, key, level) in fired or (level < 1.0 and (t, key, 1.0) in fired):
                continue
            out.append((t, key, level, f"tenant {t} spent {_usd(spent)} of its {_usd(limit)} USD budget for the "
                                       f"{period} {keys[period]} ({spent / limit:.0%})"))
    return out


@dataclass
class QuotaView:
    """The tenants' quotas and what their jobs hold now, for one admission pass: ``refuse`` says why
    a job may not start (None: it may), ``take`` counts a started one (so quotas only shrink during a
    pass, like free resources: a lane of one tenant's identical gangs is dropped at its first refusal).
    ``spend`` (tenants' budgets) and ``prices`` (``job_usd_per_hour``) are the budget side; a started
    job adds its estimated rate to its tenant's."""

    config: TenantsConfig
    used: dict[str, Demand] = field(default_factory=dict)
    spend: dict[str, TenantSpend] = field(default_factory=dict)
    prices: tuple[tuple[float, float, float], ...] = ()

    def refuse(self, tenant: str | None, demand: Demand) -> str | None:
        t = tenant_of(tenant)
        quota = self.config.quota(tenant)
        why = quota_reason(t, quota, self.used.get(t, Demand(jobs=0)), demand)
        if why is None and quota.has_budget:
            why = budget_reason(t, quota, self.spend.get(t, TenantSpend()), job_usd_per_hour(demand, self.prices))
        return why

    def take(self, tenant: str | None, demand: Demand) -> None:
        t = tenant_of(tenant)
        self.used[t] = self.used.get(t, Demand(jobs=0)) + demand
        if self.prices:
            s = self.spend.get(t, TenantSpend())
            self.spend[t] = TenantSpend(s.usd_per_hour + job_usd_per_hour(demand, self.prices), s.today_usd,
                                        s.month_usd)


def check_job_limits(config: TenantsConfig, tenant: str | None, num_workers: int, gpus_per_worker: float,
                     cpus_per_worker: float, priority: int, max_runtime_s: float | None) -> tuple[str, str] | None:
    """(spec field, why) for a job over its tenant's per-job limits; None when within them."""
    t = tenant_of(tenant)
    lim = config.quota(tenant).per_job
    if lim.max_workers is not None and num_workers > lim.max_workers:
        return "num_workers", f"{num_workers} is over tenant {t}'s per-job limit max_workers {lim.max_workers}"
    if lim.max_gpus is not None and num_workers * gpus_per_worker > lim.max_gpus + 1e-9:
        return ("resources.gpus", f"the gang's {_num(num_workers * gpus_per_worker)} GPUs are over tenant {t}'s "
                                  f"per-job limit max_gpus {_num(lim.max_gpus)}")
    if lim.max_cpus is not None and num_workers * cpus_per_worker > lim.max_cpus + 1e-9:
        return ("resources.cpus", f"the gang's {_num(num_workers * cpus_per_worker)} CPUs are over tenant {t}'s "
                                  f"per-job limit max_cpus {_num(lim.max_cpus)}")
    if lim.max_runtime_s is not None and (max_runtime_s is None or max_runtime_s > lim.max_runtime_s):
        return ("max_runtime_s", f"tenant {t}'s jobs must set max_runtime_s <= {_num(lim.max_runtime_s)} "
                                 f"(got {max_runtime_s})")
    if lim.min_priority is not None and priority < lim.min_priority:
        return "priority", f"{priority} is under tenant {t}'s per-job limit min_priority {lim.min_priority}"
    if lim.max_priority is not None and priority > lim.max_priority:
        return "priority", f"{priority} is over tenant {t}'s per-job limit max_priority {lim.max_priority}"
    return None


# ---------------------------------------------------------------------------------------------- fair share
def billing_units(bundles, cpu_weight: float) -> float:
    """What holding these bundles costs per second in fair-share usage (GPU-seconds + weighted CPU-seconds)."""
    return sum(b.get("GPU", 0.0) + b.get("CPU", 0.0) * cpu_weight for b in bundles)


def decay_usage(usage: float, rate: float, dt_s: float, half_life_s: float) -> float:
    """Usage after ``dt_s`` more seconds at ``rate`` units/s, older usage halving every ``half_life_s``
    (the rate's own contribution decays over the interval too: exact for a constant rate)."""
    if dt_s <= 0:
        return usage
    if half_life_s <= 0:
        return rate * dt_s
    k = math.log(2) / half_life_s
    decay = math.exp(-k * dt_s)
    return usage * decay + rate * (1 - decay) / k


def fair_share_factors(usage: dict[str, float], shares: dict[str, float]) -> dict[str, float]:
    """Slurm's classic factor ``F = 2^(-u/s)`` per tenant of ``shares`` (u: its part of the total
    usage, s: its part of the total shares; F = 1 for all when nobody used anything)."""
    total_u = sum(max(0.0, usage.get(t, 0.0)) for t in shares)
    total_s = sum(shares.values())
    out = {}
    for t, sh in shares.items():
        u = max(0.0, usage.get(t, 0.0)) / total_u if total_u > 0 else 0.0
        s = sh / total_s if total_s > 0 else 1.0
        out[t] = 2.0 ** (-u / s)
    return out


def boost_s(factor: float, window_s: float) -> float:
    """How much earlier than it was queued a job of a tenant with this factor is ordered (whole seconds,
    so the order changes only when a factor really moves)."""
    return float(round(factor * window_s))
