"""What an elastic cluster spends, read from its provider's books, for the CLI and the API alike.

Owns: ``cost`` (the committed spend rate now, the cap, spend so far and today from every rental's
interval × price, by kind and node type, and what the spot rentals saved against the same hours
on-demand), ``events`` (the scaling decisions with their reasons: the BudgetAutoscaler's and the
provider's refusals) and ``set_budget`` (the hard cap changed at run time: a setting in the
provider's SQLite that the provider checks on every rent and the BudgetAutoscaler on every pass).
No Ray imports.
"""

from __future__ import annotations

import calendar
import time
from pathlib import Path
from typing import Any

from raycluster.errors import InvalidSetting
from raycluster.provision.market.registry import provider_state_dir, recorded_provider
from raycluster.store.rentals import BUDGET_SETTING


def _store(state_dir: Path | str):
    from raycluster.store.rentals import RentalStore  # (reads SQLite only: no Ray)

    cfg = recorded_provider(state_dir)  # NotElastic when it rents nothing
    return cfg, RentalStore(provider_state_dir(cfg) / "rentals.db")


def cap_usd_per_hour(state_dir: Path | str) -> float | None:
    """The hourly cap in force now (set at run time, else the config's; None: no cap)."""
    cfg, store = _store(state_dir)
    try:
        return store.cap_usd_per_hour(cfg.get("max_hourly_budget_usd"))
    finally:
        store.close()


def _on_demand_prices(cfg: dict[str, Any]) -> dict[str, float]:
    """GPU type -> on-demand USD/hour where the config says it (the local market's price table)."""
    from raycluster.provision.market.local import DEFAULT_GPU_TYPES, parse_gpu_types

    local = (cfg.get("markets") or {}).get("local")
    if local is None:
        return {}
    types = parse_gpu_types(local["gpu_types"]) if local.get("gpu_types") else DEFAULT_GPU_TYPES
    return {name: float(t["on_demand_usd_per_hour"]) for name, t in types.items()
            if t.get("on_demand_usd_per_hour") is not None}


def cost(state_dir: Path | str, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    cfg, store = _store(state_dir)
    try:
        rows = [r for r in store.list(None) if r.market != "head"]
        cap = store.cap_usd_per_hour(cfg.get("max_hourly_budget_usd"))
        committed = store.committed_usd_per_hour()
    finally:
        store.close()
    midnight = calendar.timegm(time.gmtime(now)[:3] + (0, 0, 0))
    od = _on_demand_prices(cfg)
    by_kind: dict[str, float] = {}
    by_type: dict[str, float] = {}
    total = today = saved = 0.0
    for r in rows:
        end = r.released_at if r.released_at is not None else now
        usd = r.cost_usd(now)
        total += usd
        today += r.cost_usd(now, since=midnight)
        by_kind[r.kind] = by_kind.get(r.kind, 0.0) + usd
        by_type[r.node_type] = by_type.get(r.node_type, 0.0) + usd
        if r.kind == "spot" and r.gpu_type in od:
            saved += max(0.0, end - r.created_at) / 3600.0 * od[r.gpu_type] - usd
    jobs = _by_job(state_dir, rows, now)
    return {"committed_usd_per_hour": round(committed, 6), "max_hourly_budget_usd": cap,
            "spend_usd": round(total, 6), "spend_today_usd": round(today, 6),
            "by_kind_usd": {k: round(v, 6) for k, v in sorted(by_kind.items())},
            "by_node_type_usd": {k: round(v, 6) for k, v in sorted(by_type.items())},
            "saved_vs_on_demand_usd": round(saved, 6), "rentals": len(rows), "at": now, **jobs}


def _by_job(state_dir: Path | str, rentals: list, now: float) -> dict[str, Any]:
    """The rentals' cost split over the jobs that held them (``policy.cost``): by tenant, the
    costliest jobs, and what no job held (idle or starting nodes)."""
    import sqlite3

    from raycluster.policy.cost import Rental, attribute
    from raycluster.store.usage import UsageStore

    db = Path(state_dir) / "jobs.db"
    if not db.exists():
        usage = []
    else:
        store = UsageStore(db)
        try:
            usage = store.rows()
        finally:
            store.close()
    att = attribute(usage, [Rental(r.id, r.usd_per_hour, r.created_at, r.released_at, tuple(map(tuple, r.prices)))
                                for r in rentals], now)
    tenants: dict[str, str | None] = {}
    if att.by_job_usd:
        with sqlite3.connect(db) as conn:
            ids = list(att.by_job_usd)
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                tenants.update(conn.execute(f"SELECT id, tenant FROM jobs WHERE id IN ({', '.join('?' * len(part))})",
                                            part).fetchall())
    by_tenant: dict[str, float] = {}
    for job, usd in att.by_job_usd.items():
        key = tenants.get(job) or "-"
        by_tenant[key] = by_tenant.get(key, 0.0) + usd
    top = sorted(att.by_job_usd.items(), key=lambda kv: -kv[1])[:10]
    return {"jobs_usd": round(sum(att.by_job_usd.values()), 6), "unattributed_usd": round(att.unattributed_usd, 6),
            "by_tenant_usd": {k: round(v, 6) for k, v in sorted(by_tenant.items())},
            "top_jobs_usd": [{"job_id": j, "usd": round(u, 6)} for j, u in top]}


def events(state_dir: Path | str, limit: int = 100) -> list[dict[str, Any]]:
    _cfg, store = _store(state_dir)
    try:
        return store.events(limit)
    finally:
        store.close()


def set_budget(state_dir: Path | str, usd_per_hour: float | None) -> dict[str, Any]:
    """Set the hard cap at run time (None: back to the config's); it holds from the next rent and
    the BudgetAutoscaler's next pass (which sheds nodes if what is held costs more)."""
    from raycluster.policy.budget_types import BudgetConfigError, check_cap

    try:
        usd_per_hour = check_cap(usd_per_hour)
    except BudgetConfigError as exc:
        raise InvalidSetting(str(exc), field=exc.field) from None
    cfg, store = _store(state_dir)
    try:
        store.set_setting(BUDGET_SETTING, None if usd_per_hour is None else repr(float(usd_per_hour)))
        store.add_event("user", "budget_set", "max_hourly_budget_usd " + (
            f"back to the config's ({cfg.get('max_hourly_budget_usd')})" if usd_per_hour is None
            else f"set to {float(usd_per_hour):.2f}"))
    finally:
        store.close()
    return cost(state_dir)
