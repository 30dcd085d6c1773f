"""The one factory of the runtime actors: their names and options, and starting the runtime.

Owns: creating (or finding, ``get_if_exists``) the named detached actors — CheckpointManager,
Coordinator, MetricsCollector and (on an elastic cluster) BudgetAutoscaler, pinned to the head node
(worker nodes come and go) in the ``raycluster`` namespace — and ``start_runtime``. Looking an
actor up by name is ``control/handles.py``'s (the actors themselves look each other up there, so
none imports this factory). HealthMonitors are made per node by the Coordinator (``RayOps``).
"""

from __future__ import annotations

from pathlib import Path

import ray

from raycluster import constants as C
from raycluster.provision import autoscaling
from raycluster.store import storage


def _options(name: str) -> dict:
    return dict(name=name, namespace=C.NAMESPACE, lifetime="detached", get_if_exists=True,
                resources=dict(C.HEAD_NODE_RESOURCE))


def get_or_create_checkpoint_manager(state_dir: Path):
    from raycluster.control.checkpoint_manager import CheckpointManager

    return CheckpointManager.options(**_options(C.CHECKPOINT_MANAGER_NAME)).remote(str(state_dir))


def get_or_create_coordinator(state_dir: Path, storage_uri: str | None = None, checkpoint_manager=None):
    """The Coordinator, given the CheckpointManager's handle (restartable: the handle stays valid)."""
    from raycluster.control.coordinator import Coordinator

    cm = checkpoint_manager if checkpoint_manager is not None else get_or_create_checkpoint_manager(state_dir)
    return Coordinator.options(**_options(C.COORDINATOR_NAME)).remote(str(state_dir), storage_uri, cm)


def start_runtime(state_dir: Path, timeout_s: float = 120.0, storage_uri: str | None = None):
    """Create (or find) the runtime actors; return the Coordinator handle once both answer.

    ``storage_uri`` (default ``RAYCLUSTER_STORAGE_URI``, else the state dir): where checkpoints and
    rank logs go; checked here (StorageError naming it) before any actor exists. A Coordinator that
    is already running keeps the storage it was created with."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    uri = storage_uri or C.STORAGE_URI
    uri = storage.check_uri(uri, "storage_uri") if uri else None
    cm = get_or_create_checkpoint_manager(state_dir)
    coord = get_or_create_coordinator(state_dir, uri, cm)
    ray.get([cm.ping.remote(), coord.ping.remote()], timeout=timeout_s)
    if C.METRICS_ENABLED:
        ray.get(get_or_create_metrics_collector(state_dir).ping.remote(), timeout=timeout_s)
    if autoscaling.recorded_config(state_dir):  # an elastic cluster: it rents within a budget
        ray.get(get_or_create_budget_autoscaler(state_dir).ping.remote(), timeout=timeout_s)
    return coord


def get_or_create_metrics_collector(state_dir: Path, port: int | None = None):
    """The MetricsCollector on the head (its /metrics on METRICS_HOST:METRICS_PORT, or a free port
    when that one is taken)."""
    from raycluster.control.observe.metrics import MetricsCollector

    return MetricsCollector.options(**_options(C.METRICS_COLLECTOR_NAME)).remote(
        str(state_dir), C.METRICS_PORT if port is None else port, C.METRICS_HOST)


def get_or_create_budget_autoscaler(state_dir: Path):
    from raycluster.control.elastic.budget_autoscaler import BudgetAutoscaler

    return BudgetAutoscaler.options(**_options(C.BUDGET_AUTOSCALER_NAME)).remote(str(state_dir))
