"""The Coordinator's side of the cost ledger: which rented nodes each attempt held, whether an
attempt ended because one of them was preempted, and what each job has cost.

Owns: recording an attempt's share of each rented node when its gang is placed (from the placement
group's bundle → node map and the nodes' ``raycluster.io/rental`` labels) and closing it when the
attempt ends (``store.usage``); reading the provider's rentals (``rentals.db``) to price it
(``policy.cost.attribute``), and what each tenant's jobs cost (``tenant_spend``: now per hour, this
UTC day and month, for tenants' budgets). On a cluster that rents nothing it records nothing and
every job costs 0.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from raycluster.labels import rental_of
from raycluster.policy.cost import Attribution, Rental, attribute, node_share
from raycluster.policy.tenants import TenantSpend, period_starts, tenant_of
from raycluster.store.usage import UsageStore

log = logging.getLogger(__name__)


class JobLedger:
    def __init__(self, state_dir: Path, elastic: bool, clock: Callable[[], float]):
        self.state_dir = Path(state_dir)
        self.elastic = elastic
        self.clock = clock
        self.usage = UsageStore(self.state_dir / "jobs.db")
        self._rentals_store = None

    def _rentals(self):
        if self._rentals_store is None:
            from raycluster.provision.market.registry import provider_state_dir, recorded_provider
            from raycluster.store.rentals import RentalStore

            self._rentals_store = RentalStore(provider_state_dir(recorded_provider(self.state_dir)) / "rentals.db")
        return self._rentals_store

    def placed(self, job_id: str, attempt: int, bundle_nodes: list[str], bundle: dict[str, float],
               nodes: list[dict[str, Any]], now: float) -> None:
        """The attempt's gang is placed: its bundles sit on ``bundle_nodes`` (Ray node ids)."""
        if not self.elastic:
            return
        by_id = {n["id"]: n for n in nodes}
        shares: dict[str, tuple[str, float]] = {}
        for nid in bundle_nodes:
            node = by_id.get(nid)
            rental = rental_of(node)
            if not rental:
                continue  # the head or a fixed node: costs nothing
            total = node.get("resources_total") or {}
            share = node_share(bundle.get("GPU", 0), bundle.get("CPU", 0), total.get("GPU", 0), total.get("CPU", 0))
            prev = shares.get(rental, (nid, 0.0))[1]
            shares[rental] = (nid, prev + share)
        if shares:
            self.usage.placed(job_id, attempt, shares, now)

    def ended(self, job_id: str, attempt: int, now: float) -> None:
        if self.elastic:
            self.usage.ended(job_id, attempt, now)

    def preempted(self, job_id: str, attempt: int) -> bool:
        """Whether a rented node of the attempt had a preemption notice (the market took it back)."""
        if not self.elastic:
            return False
        try:
            for rid in self.usage.rentals_of(job_id, attempt):
                rec = self._rentals().get(rid)
                if rec is not None and (rec.preempt_deadline is not None or "preempt" in (rec.reason or "")):
                    return True
        except Exception:  # the books unreadable: not counted, never a failed step
            log.exception("cannot tell whether %s attempt %d was preempted", job_id, attempt)
        return False

    def _priced_rentals(self) -> list[Rental]:
        return [Rental(r.id, r.usd_per_hour, r.created_at, r.released_at, tuple(map(tuple, r.prices)))
                for r in self._rentals().list(None) if r.market != "head"]

    def tenant_spend(self, now: float | None = None) -> dict[str, TenantSpend]:
        """Per tenant: what its jobs' open shares of rented nodes cost per hour now, and what its
        jobs cost this UTC day and month ({} on a cluster that rents nothing)."""
        now = self.clock() if now is None else now
        if not self.elastic:
            return {}
        day0, month0 = period_starts(now)
        rows = self.usage.rows_with_tenant(month0)
        if not rows:
            return {}
        rentals = self._priced_rentals()
        tenant = {r["job_id"]: tenant_of(r["tenant"]) for r in rows}
        month = attribute(rows, rentals, now, since=month0).by_job_usd
        day = attribute(rows, rentals, now, since=day0).by_job_usd
        rate = _open(rows, {r.id: r.usd_per_hour for r in rentals if r.end is None})
        out: dict[str, list[float]] = {}
        for j, t in tenant.items():
            acc = out.setdefault(t, [0.0, 0.0, 0.0])
            acc[0] += rate.get(j, ((), 0.0))[1]
            acc[1] += day.get(j, 0.0)
            acc[2] += month.get(j, 0.0)
        return {t: TenantSpend(round(a, 9), round(b, 9), round(c, 9)) for t, (a, b, c) in out.items()}

    def attribution(self, job_ids: list[str] | None = None, now: float | None = None) -> Attribution:
        now = self.clock() if now is None else now
        if not self.elastic:
            return Attribution()
        return attribute(self.usage.rows(job_ids), self._priced_rentals(), now)

    def open_shares(self, job_ids: list[str]) -> dict[str, tuple[list[str], float]]:
        """Each of ``job_ids`` that holds open shares of rented nodes: (those rentals, what the shares
        cost per hour at the current prices)."""
        if not self.elastic or not job_ids:
            return {}
        price = {r.id: r.usd_per_hour for r in self._rentals().list(None) if r.released_at is None}
        return _open(self.usage.rows(job_ids), price)

    def rates(self, job_ids: list[str]) -> dict[str, float]:
        """USD/hour each of ``job_ids`` costs now: its open shares of rented nodes at their current prices."""
        shares = self.open_shares(job_ids)
        return {j: round(shares[j][1], 6) if j in shares else 0.0 for j in job_ids}

    def costs(self, job_ids: list[str]) -> dict[str, float]:
        """USD each of ``job_ids`` has cost so far (0 for a job that held no rented node)."""
        if not self.elastic or not job_ids:
            return dict.fromkeys(job_ids, 0.0)
        by_job = self.attribution(job_ids).by_job_usd
        return {j: round(by_job.get(j, 0.0), 6) for j in job_ids}


def _open(rows, price: dict[str, float]) -> dict[str, tuple[list[str], float]]:
    """job -> (the rentals of its open usage rows, their shares at ``price`` per hour)."""
    out: dict[str, tuple[list[str], float]] = {}
    for row in rows:
        if row["end"] is None:
            rentals, usd = out.get(row["job_id"], ([], 0.0))
            rentals.append(row["rental_id"])
            out[row["job_id"]] = (rentals, usd + row["share"] * price.get(row["rental_id"], 0.0))
    return out
