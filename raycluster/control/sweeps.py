"""The Coordinator's sweeps (jobs with ``trials:``): which trials each bundle runs, their results,
and the sweep's summary — a mixin of the Reconciler.

Owns: the trial assignment of an attempt's bundles (trial ``i`` to bundle ``i % bundles``, the
trials already recorded left out: a finished trial is never run again after a recovery), recording
finished trials as bundles send them (``store/trials.py``: the first result of a trial wins), the
per-trial results page by page, and the summary that becomes a finished sweep's result (counts and
the best trial by ``trials.metric``).
"""

from __future__ import annotations

from typing import Any

from raycluster.store.trials import TrialStore


class SweepsMixin:
    def _init_sweeps(self) -> None:
        self.trials = TrialStore(self.state_dir / "jobs.db")

    def _sweep_of(self, job_id: str, spec, rank: int, world: int) -> dict[str, Any] | None:
        """What bundle ``rank`` of a sweep runs this attempt (None: not a sweep)."""
        if spec.trials is None:
            return None
        done = self._sweep_done.get(job_id)
        if done is None or rank == 0:  # read once per launch of the gang
            done = self._sweep_done[job_id] = self.trials.done(job_id)
        mine = [[i, c] for i, c in enumerate(spec.trials.expand()) if i % world == rank and i not in done]
        return {"trials": mine, "per_bundle": spec.trials.per_bundle_for(spec.resources), "base_config": spec.config}

    def sweep_summary(self, job_id: str, spec) -> dict[str, Any]:
        t = spec.trials
        return self.trials.summary(job_id, t.count(), t.metric, t.mode)

    # ------------------------------------------------------------------ calls
    def trials_done(self, job_id: str, attempt: int, rows: list[dict]) -> int:
        """(From a sweep's bundle.) Record finished trials; a trial recorded before keeps its result."""
        return self.trials.record(job_id, int(attempt), rows, self.clock())

    def list_trials(self, job_id: str, limit: int = 1000, offset: int = 0, failed_only: bool = False) -> dict:
        rec = self.store.get(job_id)  # JobNotFound
        if not rec.spec.get("trials"):
            from raycluster.errors import InvalidJobSpec

            raise InvalidJobSpec(f"job {job_id} is not a sweep (its spec has no trials)", field="job_id")
        from raycluster.spec import JobSpec

        spec = self._specs.get(job_id) or JobSpec.model_validate(rec.spec)
        return {"job_id": job_id, "summary": self.sweep_summary(job_id, spec),
                "trials": self.trials.list(job_id, limit, offset, failed_only)}
