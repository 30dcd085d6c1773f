"""What runs inside one bundle of a sweep (a job with ``trials:``): many small trials in one Ray task.

Owns: ``run_bundle`` — the bundle's trials (asked for from the Coordinator as it goes,
``Coordinator.sweep_claim``: a share at a time until none is left; never a finished one) run K at a
time in threads of this one process (``trials.per_bundle``, or the bundle's GPUs /
``gpus_per_trial``), each with its own ``TrialContext`` (config = the job's config with the trial's
values on top; ``report``; a per-trial checkpoint). A trial that raises is recorded with its
traceback and the others go on (a failure is isolated to its trial). Finished trials are sent to the
Coordinator (``Coordinator.trials_done``) in batches every ``TRIAL_FLUSH_INTERVAL_S`` — a trial counts
as finished once recorded there, and a recorded trial is never run again after a recovery.
"""

from __future__ import annotations

import io
import logging
import pickle
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from typing import Any, Callable

from raycluster import constants as C
from raycluster.store import storage
from raycluster.util.files import json_safe

log = logging.getLogger(__name__)


class TrialContext:
    """``ctx`` of one trial: rank 0 of a world of 1, its own config, metrics kept with its result."""

    def __init__(self, *, job_id: str, attempt: int, trial: int, config: dict, device_of: Callable[[], Any],
                 checkpoint_root: str | None, checkpoint_policy: dict):
        self.job_id, self.attempt, self.trial = job_id, attempt, trial
        self.rank, self.world_size = 0, 1
        self.config = config
        self._device_of = device_of
        self.metrics: dict[str, Any] = {}
        self.reports = 0
        self.restored_step: int | None = None
        self._policy = checkpoint_policy or {}
        self._path = storage.join(checkpoint_root, job_id, "trials", f"trial_{trial:06d}.pkl") if checkpoint_root else None

    @property
    def device(self):
        """The bundle's device (its GPU when Ray assigned a real one, else CPU), shared by its trials."""
        return self._device_of()

    def report(self, **metrics: Any) -> None:
        """Kept as the trial's last metrics (returned with its result), not sent anywhere per call."""
        self.metrics.update(metrics)
        self.reports += 1

    def should_checkpoint(self, step: int) -> bool:
        every = self._policy.get("every_steps")
        return bool(every and step > 0 and step % every == 0)

    def save_checkpoint(self, state: dict[str, Any], step: int) -> None:
        """One file per trial, replaced atomically (a trial is small: no shards, no registry)."""
        if self._path is not None:
            storage.write_bytes(self._path, pickle.dumps({"step": step, "state": state}))

    def restore(self) -> dict[str, Any] | None:
        if self._path is None:
            return None
        try:
            payload = pickle.load(io.BytesIO(storage.read_bytes(self._path)))
        except (FileNotFoundError, OSError):
            return None
        self.restored_step = payload["step"]
        return payload["state"]


class _Flusher:
    """Finished trials, sent to the Coordinator in batches (a background thread; the last at close)."""

    def __init__(self, send: Callable[[list[dict]], None]):
        self._send = send
        self._pending: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="trial-flush", daemon=True)
        self._thread.start()

    def add(self, row: dict) -> None:
        with self._lock:
            self._pending.append(row)

    def _flush(self) -> None:
        with self._lock:
            rows, self._pending = self._pending, []
        if rows:
            try:
                self._send(rows)
            except BaseException:
                with self._lock:
                    self._pending = rows + self._pending
                raise

    def _run(self) -> None:
        while not self._stop.wait(C.TRIAL_FLUSH_INTERVAL_S):
            try:
                self._flush()
            except BaseException as exc:  # retried at the next interval; raised at close if it persists
                self._error = exc

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._flush()


def _one(fn: Callable, trial: int, config: dict, make_ctx: Callable[[int, dict], TrialContext]) -> dict:
    t0 = time.perf_counter()
    ctx = make_ctx(trial, config)
    try:
        result = fn(ctx)
        ok, error = True, None
    except Exception:
        result, ok, error = None, False, traceback.format_exc()
    if ok and not isinstance(result, dict):
        result = {"value": result}
    if ok and ctx.metrics:
        result = {**ctx.metrics, **result}
    return {"trial": trial, "ok": ok, "config": config, "result": json_safe(result), "error": error,
            "duration_s": time.perf_counter() - t0}


def _trials(claim: Callable[[], list]):
    """The bundle's trials, asked for from the Coordinator as it goes until none are left."""
    while got := claim():
        yield from got


def run_bundle(fn: Callable, sweep: dict[str, Any], make_ctx: Callable[[int, dict], TrialContext],
               send: Callable[[list[dict]], None], claim: Callable[[], list]) -> dict[str, Any]:
    """Run the bundle's trials (``[index, own config values]``, asked for through ``claim`` until it
    returns []) K at a time, each with the job's ``sweep["base_config"]`` under its own values; send
    each finished one through ``send`` (batched). Returns this bundle's counts."""
    base = sweep.get("base_config") or {}
    k = max(1, int(sweep.get("per_bundle") or 1))
    flusher = _Flusher(send)
    ok = failed = 0

    def done(row: dict) -> None:
        nonlocal ok, failed
        flusher.add(row)
        ok, failed = ok + row["ok"], failed + (not row["ok"])

    try:
        if k == 1:
            for i, own in _trials(claim):
                done(_one(fn, i, {**base, **own}, make_ctx))
        else:  # K at a time; each recorded as it finishes, the next taken as one ends
            with ThreadPoolExecutor(max_workers=k, thread_name_prefix="trial") as pool:
                running: set = set()
                for i, own in _trials(claim):
                    if len(running) >= k:
                        finished, running = wait(running, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            done(fut.result())
                    running.add(pool.submit(_one, fn, i, {**base, **own}, make_ctx))
                for fut in as_completed(running):
                    done(fut.result())
    finally:
        flusher.close()
    return {"ran": ok + failed, "succeeded": ok, "failed": failed, "per_bundle": k}
