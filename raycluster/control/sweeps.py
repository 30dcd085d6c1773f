"""The Coordinator's sweeps (jobs with ``trials:``): which trials each bundle runs, when its bundles
start, their results, and the sweep's summary — ``Sweeps``, a part of the loop with its own state.

Owns: each sweep attempt's ``SweepRun`` — the trials no bundle has taken yet (the trials already
recorded left out: a finished trial is never run again after a recovery), handed out as bundles
ask for work (``sweep_claim``: a shrinking share each time, ``policy/sweeps.claim_size``), and when
its bundles were started and first asked; starting the gang's bundles in stages
(``policy/sweeps.bundles_to_start``: one first, the rest once they would pay off); recording
finished trials as bundles send them (``store/trials.py``: the first result of a trial wins); the
per-trial results page by page, and the summary that becomes a finished sweep's result (counts and
the best trial by ``trials.metric``).
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Callable

from raycluster import constants as C
from raycluster.policy.recovery import RankStatus
from raycluster.policy.sweeps import SweepView, bundles_to_start, claim_size, next_look_s
from raycluster.store.trials import TrialStore


class SweepRun:
    """One attempt of a sweep: the trials not yet taken, and how its bundles started."""

    def __init__(self, attempt: int, bundles: int, per_bundle: int, pending: list, durations: tuple[float, int],
                 launched_at: float):
        self.attempt, self.bundles, self.per_bundle = attempt, bundles, per_bundle
        self.pending = collections.deque(pending)
        self.started = 0
        self.launched_at = launched_at
        self.working_since: float | None = None  # the first request for work
        self.total_s, self.finished = durations
        self.asked: dict[int, tuple[float, int]] = {}  # rank -> when it last asked, and how many it got
        self.share_s = self.share_n = 0.0  # its shares' times: a bundle back for more has run its last
        self.idle: set[int] = set()  # bundles stopped before they asked: nothing was left for them

    def view(self) -> SweepView:
        """Per bundle, a trial takes: what bundles back for more took per trial of their last share,
        else the finished trials' mean / K (K trials at a time share a bundle)."""
        if self.share_n:
            mean = self.share_s / self.share_n
        else:
            mean = self.total_s / self.finished / self.per_bundle if self.finished else None
        start_s = None if self.working_since is None else max(0.0, self.working_since - self.launched_at)
        return SweepView(self.bundles, self.started, len(self.pending), mean, start_s, self.working_since,
                         C.SWEEP_STAGED_START)

    def claim(self, rank: int, now: float) -> list:
        if self.working_since is None:
            self.working_since = now
        last = self.asked.get(rank)
        if last is not None and last[1]:
            self.share_s, self.share_n = self.share_s + now - last[0], self.share_n + last[1]
        n = claim_size(len(self.pending), self.bundles, self.per_bundle, self.view().mean_trial_s,
                       C.SWEEP_MIN_SHARE_S)
        self.asked[rank] = (now, n)
        return [self.pending.popleft() for _ in range(n)]


class Sweeps:
    """A part of the Coordinator's loop with its own state: the trials store and each running sweep's
    ``SweepRun``. What it needs of the loop is handed in: the clock, a way to wake it, and a way to
    launch ranks of an attempt and to cancel rank tasks; it calls nothing else of the loop."""

    def __init__(self, trials: TrialStore, *, clock: Callable[[], float], wake: Callable[[], None],
                 launch_ranks: Callable[[Any, Any, range], None], cancel: Callable[[list], None]):
        self.trials = trials
        self._clock, self._wake, self._launch_ranks, self._cancel = clock, wake, launch_ranks, cancel
        self._runs: dict[str, SweepRun] = {}
        self._lock = threading.Lock()  # bundles ask from Ray's threads, never behind a loop pass

    @staticmethod
    def launch_of(spec) -> dict[str, Any] | None:
        """What a bundle of a sweep is told (None: not a sweep): it asks for its trials as it goes."""
        if spec.trials is None:
            return None
        return {"pull": True, "per_bundle": spec.trials.per_bundle_for(spec.resources), "base_config": spec.config}

    def first_ranks(self, job_id: str, spec, attempt: int) -> range:
        """The ranks an attempt launches at once: every rank; a sweep's first bundle(s) only."""
        if spec.trials is None:
            return range(spec.num_workers)
        done = self.trials.done(job_id)
        pending = [[i, c] for i, c in enumerate(spec.trials.expand()) if i not in done]
        now = self._clock()
        run = SweepRun(attempt, spec.num_workers, spec.trials.per_bundle_for(spec.resources), pending,
                       self.trials.durations(job_id), now)
        run.started = bundles_to_start(run.view(), now, C.SWEEP_ASSUMED_START_S)
        with self._lock:
            self._runs[job_id] = run
        return range(run.started)

    def grow(self, job, att, now: float) -> None:
        """Start more of a running sweep's bundles once they would pay off (``policy/sweeps.py``)."""
        with self._lock:
            run = self._runs.get(job.id)
            if run is None or run.attempt != att.attempt or att.refs is None:
                return
            n = bundles_to_start(run.view(), now, C.SWEEP_ASSUMED_START_S)
            first = run.started
        if n:
            self._launch_ranks(job, att, range(first, first + n))
            with self._lock:
                run.started = first + n

    def results(self, job_id: str, att, results: list) -> list:
        """The ranks' results, less the bundles stopped for having nothing to do: once every trial
        is taken, a bundle started late that has not asked yet is cancelled, not waited for."""
        with self._lock:
            run = self._runs.get(job_id)
            if run is None or run.attempt != att.attempt:
                return results
            if not run.pending:
                late = [r.rank for r in results if r.status == RankStatus.RUNNING and r.rank not in run.asked
                        and r.rank not in run.idle]
                run.idle.update(late)
            else:
                late = []
            idle = set(run.idle)
        if late:
            self._cancel([att.refs[r] for r in late])
        return [r for r in results if r.rank not in idle]

    def next_look_s(self, now: float) -> float | None:
        with self._lock:
            looks = [next_look_s(r.view(), now, C.SWEEP_ASSUMED_START_S) for r in self._runs.values()]
        looks = [x for x in looks if x is not None]
        return min(looks) if looks else None

    def drop(self, job_id: str) -> None:
        with self._lock:
            self._runs.pop(job_id, None)

    def summary(self, job_id: str, spec) -> dict[str, Any]:
        t = spec.trials
        return self.trials.summary(job_id, t.count(), t.metric, t.mode)

    # ------------------------------------------------------------------ calls (from bundles)
    def claim(self, job_id: str, attempt: int, rank: int) -> list:
        """A bundle's next trials, ``[[index, own config values], ...]``; [] when none are left (or the
        attempt is over): the bundle then ends."""
        now = self._clock()
        with self._lock:
            run = self._runs.get(job_id)
            if run is None or run.attempt != int(attempt):
                return []
            first = run.working_since is None
            got = run.claim(int(rank), now)
            waiting = run.started < run.bundles
        if first and waiting:  # its start time is known now: the loop may start the others
            self._wake()
        return got

    def done(self, job_id: str, attempt: int, rows: list[dict]) -> int:
        """Record finished trials; a trial recorded before keeps its result."""
        new = self.trials.record(job_id, int(attempt), rows, self._clock())
        with self._lock:
            run = self._runs.get(job_id)
            if run is not None:
                timed = [float(r["duration_s"]) for r in rows if r.get("duration_s") is not None]
                first = run.finished == 0
                run.total_s, run.finished = run.total_s + sum(timed), run.finished + len(timed)
                waiting = run.started < run.bundles and bool(run.pending)
        if run is not None and first and waiting:  # the first trial's time: the loop may start the others
            self._wake()
        return new

    def page(self, job_id: str, spec, limit: int, offset: int, failed_only: bool) -> dict:
        return {"job_id": job_id, "summary": self.summary(job_id, spec),
                "trials": self.trials.list(job_id, limit, offset, failed_only)}
