"""Schedules: when a scheduled job submits its next run, and what a tick does. Pure, no Ray.

Owns: ``next_tick(cron, after)`` (croniter, UTC; 5 fields or 6 with seconds last) and
``decide_tick(ScheduleView, previous run's state, now) -> TickDecision``.

Policy (documented in the README, Kubernetes CronJob-like):
* A tick is due once ``now >= next_run_at``. Ticks missed while the Coordinator was down (or paused)
  are not caught up one by one: the due tick runs once and the next one is the first after ``now``.
* ``concurrency_policy`` when the previous run is unfinished: ``Forbid`` skips the tick (the run goes
  on), ``Allow`` starts another, ``Replace`` cancels the previous run and starts a new one.
* A paused schedule submits nothing; on resume its next tick is the first after the resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


def next_tick(cron: str, after: float) -> float:
    """The first tick of ``cron`` strictly after ``after`` (epoch seconds, UTC)."""
    from croniter import croniter

    return float(croniter(cron, after).get_next(float))


class TickAction(str, Enum):
    WAIT = "wait"  # not due
    RUN = "run"  # submit a run
    SKIP = "skip"  # Forbid: the previous run is unfinished
    REPLACE = "replace"  # Replace: cancel the previous run, then submit one


@dataclass(frozen=True)
class ScheduleView:
    id: str
    cron: str
    concurrency_policy: str
    paused: bool
    next_run_at: float


@dataclass(frozen=True)
class TickDecision:
    action: TickAction
    next_run_at: float
    reason: str = ""


def decide_tick(s: ScheduleView, previous_running: bool, previous_id: str | None, now: float) -> TickDecision:
    if s.paused or now < s.next_run_at:
        return TickDecision(TickAction.WAIT, s.next_run_at)
    nxt = next_tick(s.cron, now)
    if not previous_running:
        return TickDecision(TickAction.RUN, nxt, "tick")
    if s.concurrency_policy == "Forbid":
        return TickDecision(TickAction.SKIP, nxt, f"skipped: the previous run {previous_id} is unfinished (Forbid)")
    if s.concurrency_policy == "Replace":
        return TickDecision(TickAction.REPLACE, nxt, f"replaces the unfinished run {previous_id} (Replace)")
    return TickDecision(TickAction.RUN, nxt, f"tick; the previous run {previous_id} is unfinished (Allow)")
