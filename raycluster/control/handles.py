"""Finding the runtime actors: the one lookup by name, apart from creating them.

Owns: ``get_handle`` — the named runtime actor in the ``raycluster`` namespace, or a
``ClusterUnavailable`` saying how to start it. Everything that talks to a running runtime (the
clients, the HTTP API, the actors among themselves, the CLI) looks actors up here; only
``control/actors.py`` creates them (it imports the actor classes — this module imports none, so
an actor looking up another never imports its own factory).
"""

from __future__ import annotations

import ray

from raycluster import constants as C
from raycluster.errors import ClusterUnavailable

_MISSING = {
    C.COORDINATOR_NAME: "the raycluster runtime is not running on this cluster (no Coordinator actor); "
                        "start it with `raycluster up`",
    C.CHECKPOINT_MANAGER_NAME: "no CheckpointManager actor on this cluster; start the runtime with `raycluster up`",
    C.METRICS_COLLECTOR_NAME: "no MetricsCollector on this cluster; start the runtime with `raycluster up`",
    C.BUDGET_AUTOSCALER_NAME: "no BudgetAutoscaler on this cluster: it rents no nodes (start an elastic cluster "
                              "with `ray up ray-cluster.yaml` or `raycluster up --local --elastic FILE`)",
}


def get_handle(name: str):
    """The named runtime actor, or ClusterUnavailable saying how to start it."""
    try:
        return ray.get_actor(name, namespace=C.NAMESPACE)
    except ValueError:
        raise ClusterUnavailable(_MISSING.get(name, f"no {name} actor on this cluster")) from None
