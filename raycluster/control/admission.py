"""Admission, a part of the Coordinator's loop: the ordered queue of pending jobs, which of them
start now, and why each of the others waits — on its row, where users see it.

Owns: the ``AdmissionQueue`` (ordered by priority, fair-share boost and age; it skips a decision
when nothing it depends on changed), the waiting reason stored on each pending row as last
written (``WaitingIndex``), and the BudgetAutoscaler's word on the jobs it rents nothing for
(``budget_reasons``: shown instead of "no room", also on the rows of gangs being placed again).
``version`` grows when a waiting reason changes (the demand told to Ray leaves quota-held jobs out).

What it is handed: the job table (to write waiting reasons), a way to start a job (the loop's
``apply`` of a START step) and the loop's guard; per pass, the free view (excluded nodes and
unplaced groups already taken out), the quota view and the pending rows.
"""

from __future__ import annotations

from typing import Callable

from raycluster import constants as C
from raycluster.policy.admission import AdmissionQueue, WaitingIndex
from raycluster.policy.tenants import QuotaView
from raycluster.store.jobs import JobRecord, JobStore
from raycluster.store.lifecycle import JobState


class Admission:
    def __init__(self, store: JobStore, *, start: Callable[[JobRecord, float, int | None], object],
                 guard: Callable[..., bool]):
        self.store = store
        self._start = start
        self._guard = guard
        self.queue = AdmissionQueue(C.STARVATION_THRESHOLD_S, C.AGING_S)
        self.waiting = WaitingIndex()  # the pending jobs by their stored waiting reason
        self.version = 0
        self.budget_reasons: dict[str, str] = {}
        self.budget_version = 0
        self._placing_waiting: dict[str, str] = {}  # placing gangs -> the budget reason written on their rows
        self.blocked: str | None = None  # the job at the head of the queue that does not fit

    def tick(self, now: float, free: dict[str, dict[str, float]], quota: QuotaView | None,
             pending: dict[str, JobRecord]) -> str | None:
        """Start what fits, record why the others wait; the job blocked at the head of the queue
        (None: none), or the last pass's when nothing changed."""
        self.queue.configure(C.STARVATION_THRESHOLD_S, C.AGING_S)
        decision = self.queue.decide(free, now, quota)
        if decision is None:  # nothing it depends on changed since the last pass
            return self.blocked
        self.blocked = decision.blocked
        done = True
        for jid in decision.admit:
            done &= self._guard(f"start {jid}", self._start, pending[jid], now, decision.sizes.get(jid))
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
        changed = self.waiting.changed(groups)
        done &= self._guard("record waiting reasons", self.store.set_waiting, changed)
        if not done:  # not all of it was carried out: decide again next pass
            self.queue.forget()
            return self.blocked
        for jid, why in changed.items():
            rec = pending[jid]
            self.waiting.move(jid, rec.waiting, why)
            rec.waiting = why
        if changed:
            self.version += 1
        return self.blocked

    def set_budget_reasons(self, reasons: dict[str, str], placing: set[str]) -> None:
        """Why no node is rented for these waiting jobs (budget, max_workers); shown as their reason
        — on the rows of ``placing`` gangs too (a gang placed again after its node was shed)."""
        self.budget_reasons = dict(reasons)
        self.budget_version += 1
        self.queue.forget()
        now = {j: why for j, why in reasons.items() if j in placing}
        changed = {j: now.get(j) for j in (set(now) | set(self._placing_waiting)) & placing
                   if now.get(j) != self._placing_waiting.get(j)}
        self._placing_waiting = now
        self._guard("record waiting reasons of placing gangs", self.store.set_waiting, changed, JobState.PLACING)

    def placing_again(self, job_id: str) -> None:
        """A gang is placed again while the BudgetAutoscaler rents nothing for it: say why on its row."""
        why = self.budget_reasons.get(job_id)
        if why is not None:
            self._placing_waiting[job_id] = why
            self._guard(f"waiting reason of {job_id}", self.store.set_waiting, {job_id: why}, JobState.PLACING)
