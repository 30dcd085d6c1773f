"""How a sweep's trials reach its bundles, and when its bundles start: pure decisions, no Ray.

Owns: ``claim_size`` — how many trials a bundle takes when it asks for work (guided
self-scheduling: a share of what is left that shrinks as the sweep drains, so bundles finish
together, never fewer than the K trials a bundle runs at a time) — and ``bundles_to_start`` — how
many more of the gang's bundles to start now.

Why start bundles in stages: a bundle's first trial waits for a cold start (a worker process, its
``runtime_env``, the user's module imported — ``import torch`` alone is ~1.5 s), and several
bundles starting at once on one machine share its cores, so each cold start gets slower. When the
trials are short, one warm bundle finishes them all before the others would have started. So a
sweep starts one bundle, and starts the rest once more of them would pay off:

* when a finished trial tells how long trials take: the work not yet taken would keep the bundles
  already started busy for longer than a bundle took to start;
* before any trial has finished: once the first bundle has been working for as long as it took to
  start (a ski-rental rule: waiting costs at most one more start than knowing would have);
* at once, when earlier attempts' trials say the work left is longer than a start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SweepView:
    """One attempt of a sweep, as the Coordinator sees it."""
    bundles: int                     # the gang's bundles (its num_workers)
    started: int                     # bundles launched so far in this attempt
    unclaimed: int                   # trials no bundle has taken yet
    mean_trial_s: float | None       # mean run time of the trials finished so far (any attempt)
    start_s: float | None            # launch -> first request for work, of this attempt's first bundle
    working_since: float | None      # when this attempt's first bundle first asked for work
    staged: bool = True              # False: every bundle at once (SWEEP_STAGED_START off)


def claim_size(unclaimed: int, bundles: int, per_bundle: int, mean_trial_s: float | None = None,
               min_share_s: float = 0.0) -> int:
    """Trials a bundle takes per request: ceil(unclaimed / (2 * bundles)), at least ``per_bundle``,
    and — once a trial's time per bundle is known — at least ``min_share_s`` of work (tiny trials
    are not fetched a few at a time: a request costs more than they do)."""
    if unclaimed <= 0:
        return 0
    n = max(1, per_bundle, math.ceil(unclaimed / (2 * max(1, bundles))))
    if mean_trial_s is not None and min_share_s > 0:
        n = max(n, math.ceil(min_share_s / max(mean_trial_s, 1e-9)))
    return min(unclaimed, n)


def bundles_to_start(v: SweepView, now: float, assumed_start_s: float) -> int:
    """How many more bundles to launch now (0..bundles - started). ``assumed_start_s``: a bundle's
    start time when none has been measured in this attempt yet."""
    left = v.bundles - v.started
    if left <= 0:
        return 0
    if not v.staged:
        return left
    if v.started == 0:  # the attempt's launch
        known_long = v.mean_trial_s is not None and v.unclaimed * v.mean_trial_s > assumed_start_s
        return left if known_long else 1
    if v.unclaimed == 0 or v.working_since is None:  # nothing left to give, or the first still starting
        return 0
    start_s = v.start_s if v.start_s is not None else assumed_start_s
    if v.mean_trial_s is not None:
        return left if v.unclaimed * v.mean_trial_s / v.started > start_s else 0
    return left if now - v.working_since >= start_s else 0


def next_look_s(v: SweepView, now: float, assumed_start_s: float) -> float | None:
    """Seconds until ``bundles_to_start`` may change with nothing else happening (the ski-rental
    timer); None when only an event (a request for work, a finished trial) can change it."""
    if not v.staged or v.started >= v.bundles or v.unclaimed == 0 or v.working_since is None:
        return None
    if v.mean_trial_s is not None:
        return None
    start_s = v.start_s if v.start_s is not None else assumed_start_s
    return max(0.0, v.working_since + start_s - now)
