"""Every outside call of the budget loop, behind one small wrapper (the loop is driven with a fake
in unit tests and with this in integration tests).

Owns: ``ScalingOps`` — reading the elastic cluster's live autoscaling config and writing the
node-type limits the BudgetAutoscaler allows into it (Ray's autoscaler v2 re-reads that file every
tick, so Ray does the mechanics within our limits), the provider's books (rentals, the hard cap,
scaling events) and the markets' offers through a ``MarketNodeProvider`` sharing the provider's
SQLite, Ray's node table, the Coordinator's queue and waiting reasons, held nodes repriced at the
markets' current prices, and giving a node back (drained in Ray first; a busy one after its gangs
were asked to checkpoint).
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

from raycluster import constants as C
from raycluster.provision.local.record import cluster_dir, read_json
from raycluster.util.files import atomic_write_json

log = logging.getLogger(__name__)

# the configured limits of each node type, kept beside the live ones the BudgetAutoscaler writes
ORIGINAL_LIMITS_KEY = "raycluster_type_limits"


class ScalingOps:
    def __init__(self, state_dir: Path | str, coordinator=None):
        from raycluster.provision.node_provider import MarketNodeProvider

        self.config_path = cluster_dir(Path(state_dir)) / "autoscaling.json"
        config = self.config()
        if not config:
            raise FileNotFoundError(f"{self.config_path}: not an elastic cluster")
        self.provider = MarketNodeProvider(config["provider"], config["cluster_name"])
        self.coordinator = coordinator

    # ---- the live autoscaling config ----------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return read_json(self.config_path) or {}

    def original_limits(self, config: dict[str, Any]) -> dict[str, dict[str, int]]:
        """Each worker type's configured min/max workers (before the BudgetAutoscaler wrote any)."""
        kept = (config.get("provider") or {}).get(ORIGINAL_LIMITS_KEY)
        if kept:
            return kept
        return {name: {"min_workers": int(t.get("min_workers", 0)), "max_workers": int(t.get("max_workers", 0))}
                for name, t in (config.get("available_node_types") or {}).items()
                if name != config.get("head_node_type")}

    def write_limits(self, limits: dict[str, tuple[int, int]], idle_timeout_minutes: float | None = None) -> bool:
        """Set each type's (min_workers, max_workers) (and Ray's idle timeout) in the live config;
        True when the file changed. Written atomically: Ray's reader never sees half a file."""
        config = self.config()
        new = copy.deepcopy(config)
        new["provider"].setdefault(ORIGINAL_LIMITS_KEY, self.original_limits(config))
        for name, (lo, hi) in limits.items():
            t = new["available_node_types"].get(name)
            if t is not None:
                t["min_workers"], t["max_workers"] = int(lo), int(hi)
        if idle_timeout_minutes is not None:
            new["idle_timeout_minutes"] = idle_timeout_minutes
        if new == config:
            return False
        atomic_write_json(self.config_path, new, mode=0o644)
        return True

    # ---- the provider's books and the markets -------------------------------------------------------
    def rentals(self) -> list:
        from raycluster.store.rentals import RentalState

        return [r for r in self.provider.store.list((RentalState.REQUESTED, RentalState.RUNNING,
                                                     RentalState.RELEASING)) if r.market != "head"]

    def offers(self, node_config: dict[str, Any]) -> tuple[float | None, int]:
        """(the cheapest price, slots available now) of a node type's offers; (None, 0): none."""
        try:
            _market, slots = self.provider._offers(node_config)
        except Exception as exc:  # a market refusing or unreachable offers nothing now
            log.info("no offers for %s: %s", node_config, exc)
            return None, 0
        if not slots:
            return None, 0
        return min(o.usd_per_hour for o in slots), len(slots)

    def cap(self) -> float | None:
        return self.provider.budget_usd_per_hour()

    def event(self, action: str, reason: str, node_type: str | None = None, count: int = 0) -> None:
        self.provider.store.add_event("budget", action, reason, node_type, count)

    def release(self, rental_id: str, reason: str, ray_node_id: str | None, busy: bool = False) -> None:
        """Give a node back: drained in Ray first, then released through its market. (Ray refuses
        an idle-termination drain of a busy node: a busy one is drained as a preemption.)"""
        self._drain(rental_id, reason, ray_node_id, busy)
        self.provider.release(rental_id, reason)

    def _drain(self, rental_id: str, reason: str, ray_node_id: str | None, busy: bool) -> None:
        if ray_node_id and self.provider.head_address:
            from raycluster.provision.drain import drain_node

            try:
                drain_node(self.provider.head_address, ray_node_id, "PREEMPTION" if busy else "IDLE_TERMINATION",
                           reason, time.time() + C.SHED_DRAIN_DEADLINE_S)
            except Exception as exc:
                log.warning("drain of %s before release failed: %s", rental_id, exc)

    def release_after_checkpoint(self, rental_id: str, reason: str, ray_node_id: str | None,
                                 wait_s: float | None = None, cause: str = "budget") -> list[str]:
        """Give back a node jobs run on, in this order: its gangs are asked to checkpoint now (and
        waited for, up to ``wait_s``); the node is drained in Ray (nothing new is placed there);
        its gangs are moved by the Coordinator with ``cause`` (no restart spent); then it is
        released. The jobs that had not checkpointed in time, []: all had."""
        wait_s = C.SHED_CHECKPOINT_WAIT_S if wait_s is None else wait_s
        pending: list[str] = []
        try:
            asked = self.checkpoint_now(rental_id, reason, cause, ray_node_id)
            pending = list(asked)
            deadline = time.monotonic() + wait_s
            while pending and time.monotonic() < deadline:
                time.sleep(0.5)
                pending = self.checkpoint_pending({j: asked[j] for j in pending})
        except Exception:  # the Coordinator unreachable: the node is given back all the same
            log.exception("checkpoint before releasing %s failed", rental_id)
        if pending:
            log.warning("releasing %s: %s did not checkpoint within %.0fs", rental_id, ", ".join(pending), wait_s)
        self._drain(rental_id, reason, ray_node_id, busy=True)
        try:
            self.move_off(rental_id, cause, reason, ray_node_id)
        except Exception:  # not moved: its ranks die with the node and it recovers the usual way
            log.exception("moving the gangs off %s failed", rental_id)
        self.provider.release(rental_id, reason)
        return pending

    def move_off(self, rental_id: str, cause: str, reason: str, ray_node_id: str | None = None) -> list[str]:
        """Ask the Coordinator to move the gangs on a rented node now (cause ``budget`` ...)."""
        import ray

        if self.coordinator is None:
            return []
        return ray.get(self.coordinator.move_off.remote(rental_id, cause, reason, ray_node_id), timeout=60)

    def checkpoint_now(self, rental_id: str, reason: str, cause: str = "budget",
                       ray_node_id: str | None = None) -> dict[str, list]:
        """Start moving the gangs on a rented node (with ``cause``): each is asked to checkpoint now
        ({job: [attempt, step before]}); ``move_off`` ends the moves."""
        import ray

        if self.coordinator is None:
            return {}
        return ray.get(self.coordinator.checkpoint_now.remote(rental_id, reason, cause, ray_node_id), timeout=30)

    def checkpoint_pending(self, asked: dict[str, list]) -> list[str]:
        import ray

        return ray.get(self.coordinator.checkpoint_pending.remote(asked), timeout=60)

    def reprice(self) -> list[tuple[str, float, float]]:
        """Bill held nodes at their markets' prices now (spot prices move)."""
        return self.provider.reprice()

    # ---- Ray and the Coordinator ---------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        from raycluster.control.nodes import read_nodes

        return read_nodes()

    def waiting(self) -> list[dict[str, Any]]:
        import ray

        return ray.get(self.coordinator.budget_queue.remote(), timeout=30) if self.coordinator else []

    def running(self) -> list[dict[str, Any]]:
        """The gangs running on rented nodes (the Coordinator's ``budget_running``), for spot return."""
        import ray

        return ray.get(self.coordinator.budget_running.remote(), timeout=30) if self.coordinator else []

    def unhealthy(self) -> dict[str, str]:
        """Rented nodes the Coordinator judges unhealthy (not those drained by hand): rental id -> why."""
        import ray

        if self.coordinator is None:
            return {}
        out = {}
        for n in ray.get(self.coordinator.health.remote(), timeout=30):
            if n.get("rental_id") and n["alive"] and n["state"] == "unhealthy" and not n["drained"]:
                out[n["rental_id"]] = "; ".join(n["reasons"]) or "unhealthy"
        return out

    def set_waiting(self, reasons: dict[str, str]) -> None:
        if self.coordinator is not None:
            self.coordinator.set_budget_reasons.remote(reasons)
