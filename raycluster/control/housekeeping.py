"""Housekeeping, the last part of the Coordinator's loop: what keeps Ray's side tidy.

Owns: when it last ran each chore — removing placement groups named by us that belong to no
active attempt (every ``PG_SWEEP_INTERVAL_S``, and once at start-up) and renewing the GCS pins of
the packages unfinished jobs and schedules need (every ``PACKAGE_PIN_S`` / 3: Ray deletes a
package once no job, actor or worker refers to it, and the Ray job that uploaded it
(``ray job submit --working-dir``) may end long before our job is placed).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from raycluster import constants as C
from raycluster.control.rayops import GangOps, pg_name
from raycluster.store.jobs import JobStore
from raycluster.store.lifecycle import ACTIVE_STATES

log = logging.getLogger("raycluster.coordinator")


class Housekeeping:
    def __init__(self, store: JobStore, ops: GangOps, *, packages: Callable[[], Iterable[str]]):
        self.store = store
        self.ops = ops
        self._packages = packages  # the gcs:// packages still needed
        self._last_sweep = 0.0
        self._last_pin = 0.0

    def tick(self, now: float) -> None:
        if now - self._last_sweep > C.PG_SWEEP_INTERVAL_S:
            self._last_sweep = now
            self.sweep_placement_groups()
        if now - self._last_pin > C.PACKAGE_PIN_S / 3:
            self._last_pin = now
            uris = sorted(set(self._packages()))
            if uris:
                self.ops.pin_uris(uris, C.PACKAGE_PIN_S)

    def sweep_placement_groups(self) -> None:
        """Remove placement groups named by us that belong to no active attempt."""
        keep = {pg_name(j.id, j.attempt) for j in self.store.list(list(ACTIVE_STATES))}
        for name in self.ops.our_pg_names():
            if name not in keep:
                log.info("removing orphaned placement group %s", name)
                self.ops.remove_pg_by_name(name)
