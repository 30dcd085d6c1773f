"""The one factory of the runtime actors: their names and options, starting and stopping the runtime.

Owns: creating (or finding, ``get_if_exists``) the named detached actors — CheckpointManager,
Coordinator, MetricsCollector and (on an elastic cluster) BudgetAutoscaler, pinned to the head node
(worker nodes come and go) in the ``raycluster`` namespace — each handed the runtime's ``Settings``
(``start_runtime``); stopping them (and the HealthMonitors) by name, and starting them again with
other settings on the same cluster (``restart_runtime``). Looking an actor up by name is
``control/handles.py``'s (the actors themselves look each other up there, so none imports this
factory). HealthMonitors are made per node by the Coordinator (``RayOps``), with its settings.
"""

from __future__ import annotations

import time
from pathlib import Path

import ray

from raycluster import constants as C
from raycluster.provision import autoscaling
from raycluster.settings import Settings, of
from raycluster.store import storage

# every runtime actor by name, in the order they are stopped
RUNTIME_ACTORS = (C.BUDGET_AUTOSCALER_NAME, C.METRICS_COLLECTOR_NAME, C.COORDINATOR_NAME, C.CHECKPOINT_MANAGER_NAME)


def _options(name: str) -> dict:
    return dict(name=name, namespace=C.NAMESPACE, lifetime="detached", get_if_exists=True,
                resources=dict(C.HEAD_NODE_RESOURCE))


def get_or_create_checkpoint_manager(state_dir: Path, settings: Settings | None = None):
    from raycluster.control.checkpoint_manager import CheckpointManager

    return CheckpointManager.options(**_options(C.CHECKPOINT_MANAGER_NAME)).remote(
        str(state_dir), of(settings).model_dump())


def get_or_create_coordinator(state_dir: Path, storage_uri: str | None = None, checkpoint_manager=None,
                              settings: Settings | None = None):
    """The Coordinator, given the CheckpointManager's handle (restartable: the handle stays valid)."""
    from raycluster.control.coordinator import Coordinator

    cm = (checkpoint_manager if checkpoint_manager is not None
          else get_or_create_checkpoint_manager(state_dir, settings))
    return Coordinator.options(**_options(C.COORDINATOR_NAME)).remote(str(state_dir), storage_uri, cm,
                                                                      of(settings).model_dump())


def start_runtime(state_dir: Path, timeout_s: float = 120.0, storage_uri: str | None = None,
                  settings: Settings | None = None):
    """Create (or find) the runtime actors; return the Coordinator handle once both answer.

    ``settings`` (default: ``Settings.from_env()`` of this process): what every actor, HealthMonitor
    and rank of this runtime runs with. Actors already running keep theirs (``restart_runtime``
    changes them). ``storage_uri`` (default the settings' ``STORAGE_URI``, else the state dir): where
    checkpoints and rank logs go; checked here (StorageError naming it) before any actor exists. A
    Coordinator that is already running keeps the storage it was created with."""
    settings = of(settings)
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    uri = storage_uri or settings.STORAGE_URI
    uri = storage.check_uri(uri, "storage_uri") if uri else None
    cm = get_or_create_checkpoint_manager(state_dir, settings)
    coord = get_or_create_coordinator(state_dir, uri, cm, settings)
    ray.get([cm.ping.remote(), coord.ping.remote()], timeout=timeout_s)
    if settings.METRICS_ENABLED:
        ray.get(get_or_create_metrics_collector(state_dir, settings=settings).ping.remote(), timeout=timeout_s)
    if autoscaling.recorded_config(state_dir):  # an elastic cluster: it rents within a budget
        ray.get(get_or_create_budget_autoscaler(state_dir, settings).ping.remote(), timeout=timeout_s)
    return coord


def stop_runtime(timeout_s: float = 60.0) -> list[str]:
    """Stop the runtime actors and every HealthMonitor of this namespace (by name; nothing else of
    the cluster). Jobs, checkpoints and budgets stay in SQLite; a running job's ranks die with the
    Coordinator and it recovers when a runtime starts again. The names stopped."""
    from raycluster.control.health.monitor import MONITOR_PREFIX

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a.get("namespace") == C.NAMESPACE and (a["name"] in RUNTIME_ACTORS
                                                       or a["name"].startswith(MONITOR_PREFIX))]
    names.sort(key=lambda n: RUNTIME_ACTORS.index(n) if n in RUNTIME_ACTORS else -1)
    for name in names:
        try:
            ray.kill(ray.get_actor(name, namespace=C.NAMESPACE), no_restart=True)
        except ValueError:
            pass  # gone by itself meanwhile
    deadline = time.monotonic() + timeout_s
    for name in names:  # a name is free again once Ray has recorded its actor dead
        while True:
            try:
                ray.get_actor(name, namespace=C.NAMESPACE)
            except ValueError:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"runtime actor {name} still registered {timeout_s:.0f} s after it was killed")
            time.sleep(0.05)
    return names


def restart_runtime(state_dir: Path, settings: "Settings | dict | None" = None, timeout_s: float = 120.0,
                    storage_uri: str | None = None):
    """Stop the runtime (``stop_runtime``) and start it again on the same cluster with ``settings``
    (and ``state_dir``, which may be another one): what a test needing other knobs does instead of
    starting another cluster. The new Coordinator handle. ``settings`` are checked before anything
    stops (``InvalidSetting``)."""
    settings = of(settings)
    stop_runtime(timeout_s)
    return start_runtime(state_dir, timeout_s, storage_uri, settings)


def get_or_create_metrics_collector(state_dir: Path, port: int | None = None, settings: Settings | None = None):
    """The MetricsCollector on the head (its /metrics on METRICS_HOST:METRICS_PORT, or a free port
    when that one is taken)."""
    from raycluster.control.observe.metrics import MetricsCollector

    settings = of(settings)
    return MetricsCollector.options(**_options(C.METRICS_COLLECTOR_NAME)).remote(
        str(state_dir), settings.METRICS_PORT if port is None else port, settings.METRICS_HOST,
        settings.model_dump())


def get_or_create_budget_autoscaler(state_dir: Path, settings: Settings | None = None):
    from raycluster.control.elastic.budget_autoscaler import BudgetAutoscaler

    return BudgetAutoscaler.options(**_options(C.BUDGET_AUTOSCALER_NAME)).remote(str(state_dir),
                                                                                 of(settings).model_dump())
