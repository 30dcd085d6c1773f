"""The one factory of the runtime actors: their names, options and how to find them.

Owns: creating (or finding, ``get_if_exists``) the named detached actors — CheckpointManager and
Coordinator, both pinned to the head node (worker nodes come and go) in the ``raycluster``
namespace — and looking one up by name with a clear ``ClusterUnavailable`` when it is not there.
Later runtime actors (HealthMonitor, BudgetAutoscaler, MetricsCollector) are added here.
"""

from __future__ import annotations

from pathlib import Path

import ray

from raycluster import constants as C
from raycluster.errors import ClusterUnavailable
from raycluster.provision import autoscaling
from raycluster.store import storage

_MISSING = {
    C.COORDINATOR_NAME: "the raycluster runtime is not running on this cluster (no Coordinator actor); "
                        "start it with `raycluster up`",
    C.CHECKPOINT_MANAGER_NAME: "no CheckpointManager actor on this cluster; start the runtime with `raycluster up`",
    C.METRICS_COLLECTOR_NAME: "no MetricsCollector on this cluster; start the runtime with `raycluster up`",
    C.BUDGET_AUTOSCALER_NAME: "no BudgetAutoscaler on this cluster: it rents no nodes (start an elastic cluster "
                              "with `ray up ray-cluster.yaml` or `raycluster up --local --elastic FILE`)",
}


def _options(name: str) -> dict:
    return dict(name=name, namespace=C.NAMESPACE, lifetime="detached", get_if_exists=True,
                resources=dict(C.HEAD_NODE_RESOURCE))


def get_or_create_checkpoint_manager(state_dir: Path):
    from raycluster.control.checkpoint_manager import CheckpointManager

    return CheckpointManager.options(**_options(C.CHECKPOINT_MANAGER_NAME)).remote(str(state_dir))


def get_or_create_coordinator(state_dir: Path, storage_uri: str | None = None):
    from raycluster.control.coordinator import Coordinator

    return Coordinator.options(**_options(C.COORDINATOR_NAME)).remote(str(state_dir), storage_uri)


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
    coord = get_or_create_coordinator(state_dir, uri)
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


def get_handle(name: str):
    """The named runtime actor, or ClusterUnavailable saying how to start it."""
    try:
        return ray.get_actor(name, namespace=C.NAMESPACE)
    except ValueError:
        raise ClusterUnavailable(_MISSING.get(name, f"no {name} actor on this cluster")) from None
