"""The one place the Coordinator touches Ray for gangs: nodes, placement groups, rank tasks.

Owns every Ray call the control loop makes, behind ``GangOps`` — a declared Protocol that the real
``RayOps`` and the unit tests' fake (``tests/fakes.py``) both implement — so the loop's logic can be
driven by a fake in unit tests and by the real cluster in integration tests. Ray's failures are
turned into typed raycluster errors and rank causes here, nowhere else.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raycluster import constants as C
from raycluster.control.nodes import read_nodes
from raycluster.errors import ClusterUnavailable, InvalidJobSpec
from raycluster.labels import RAY_NODE_ID_LABEL
from raycluster.policy.recovery import RankResult, RankStatus
from raycluster.rank.executor import check_entrypoint, run_rank
from raycluster.store.lifecycle import Cause

log = logging.getLogger(__name__)

_SYSTEM_RAY_ERRORS = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.OutOfMemoryError,
    ray.exceptions.LocalRayletDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.OwnerDiedError,
    ray.exceptions.RuntimeEnvSetupError,
    ray.exceptions.TaskUnschedulableError,
    ray.exceptions.RaySystemError,
)

_CAUSES = ((ray.exceptions.NodeDiedError, Cause.NODE_LOST), (ray.exceptions.LocalRayletDiedError, Cause.NODE_LOST),
           (ray.exceptions.OutOfMemoryError, Cause.OOM), (ray.exceptions.WorkerCrashedError, Cause.WORKER_CRASHED))

_run_rank_remote = ray.remote(max_retries=0)(run_rank)
_check_entrypoint_remote = ray.remote(num_cpus=0, max_retries=1)(check_entrypoint)




def pg_name(job_id: str, attempt: int) -> str:
    return f"{C.PG_NAME_PREFIX}{job_id}-a{attempt}"


def failure_cause(exc: BaseException) -> Cause:
    """The cause of a rank failure Ray reports (node lost, worker crashed, OOM-killed, other)."""
    return next((cause for typ, cause in _CAUSES if isinstance(exc, typ)), Cause.SYSTEM_ERROR)


class GangOps(Protocol):
    """What the control loop needs from Ray (implemented by RayOps and by the unit tests' fake)."""

    def nodes(self) -> list[dict[str, Any]]: ...
    def create_pg(self, name: str, bundles: list[dict[str, float]], strategy: str,
                  exclude_nodes: list[str] | None = None) -> Any: ...
    def get_pg(self, name: str) -> Any | None: ...
    def pg_ready(self, pg: Any) -> bool: ...
    def pg_nodes(self, pg: Any) -> list[str]: ...
    def remove_pg(self, pg: Any | None) -> None: ...
    def remove_pg_by_name(self, name: str) -> None: ...
    def our_pg_names(self) -> dict[str, Any]: ...
    def launch_rank(self, pg: Any, bundle_index: int, resources: dict[str, float], launch: dict,
                    runtime_env: dict | None, task_name: str) -> Any: ...
    def poll(self, refs: list) -> list[RankResult]: ...
    def cancel(self, refs: list) -> None: ...
    def watch(self, refs: list, callback: Callable[[], None]) -> None: ...
    def pin_uris(self, uris: list[str], expiration_s: int) -> None: ...
    def request_resources(self, bundles: list[dict[str, float]]) -> None: ...
    def check_entrypoint(self, entrypoint: str, runtime_env: dict | None, timeout_s: float) -> str | None: ...
    def ensure_monitor(self, node_id: str, coordinator: Any, disk_path: str) -> Any: ...


class RayOps:
    """Ray calls for nodes, placement groups and rank tasks. ``settings`` (every field, as a dict):
    the Coordinator's, handed to the HealthMonitors it starts."""

    def __init__(self, settings: dict | None = None):
        self.settings = settings

    # ------------------------------------------------------------- nodes
    def nodes(self) -> list[dict[str, Any]]:
        return read_nodes()

    # ------------------------------------------------------------- placement groups
    def create_pg(self, name: str, bundles: list[dict[str, float]], strategy: str,
                  exclude_nodes: list[str] | None = None) -> PlacementGroup:
        """A detached group; with ``exclude_nodes``, Ray keeps every bundle off those nodes (a label
        selector on Ray's own ``ray.io/node-id`` label: reversible, unlike draining the node in Ray)."""
        selector = None
        if exclude_nodes:
            selector = [{RAY_NODE_ID_LABEL: f"!in({','.join(exclude_nodes)})"} for _ in bundles]
        return placement_group(bundles, strategy=strategy, name=name, lifetime="detached",
                               bundle_label_selector=selector)

    def ensure_monitor(self, node_id: str, coordinator: Any, disk_path: str) -> Any:
        from raycluster.control.health.monitor import ensure_monitor

        return ensure_monitor(node_id, coordinator, disk_path, self.settings)

    def get_pg(self, name: str) -> PlacementGroup | None:
        try:
            return ray.util.get_placement_group(name)
        except ValueError:
            return None

    def pg_ready(self, pg: PlacementGroup) -> bool:
        """Is the group placed? Asks the GCS (``pg.ready()`` would submit a probe task per call)."""
        return ray.util.placement_group_table(pg).get("state") == "CREATED"

    def pg_nodes(self, pg: PlacementGroup) -> list[str]:
        """The Ray node id each bundle of a placed group sits on, in bundle order."""
        table = ray.util.placement_group_table(pg).get("bundles_to_node_id") or {}
        return [table[i] for i in sorted(table)]

    def remove_pg(self, pg: PlacementGroup | None) -> None:
        if pg is None:
            return
        try:
            remove_placement_group(pg)
        except Exception as exc:  # already removed
            log.debug("remove_placement_group: %s", exc)

    def our_pg_names(self) -> dict[str, Any]:
        """Live (not REMOVED) placement groups named by us: name -> id."""
        out = {}
        for pid, info in ray.util.placement_group_table().items():
            name = info.get("name") or ""
            if name.startswith(C.PG_NAME_PREFIX) and info.get("state") != "REMOVED":
                out[name] = pid
        return out

    def remove_pg_by_name(self, name: str) -> None:
        self.remove_pg(self.get_pg(name))

    # ------------------------------------------------------------- tasks
    def launch_rank(self, pg: PlacementGroup, bundle_index: int, resources: dict[str, float], launch: dict,
                    runtime_env: dict | None, task_name: str) -> ray.ObjectRef:
        opts: dict[str, Any] = dict(
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=bundle_index),
            num_cpus=resources.get("CPU", 0), num_gpus=resources.get("GPU", 0), name=task_name,
        )
        if resources.get("memory"):
            opts["memory"] = resources["memory"]
        if runtime_env:
            opts["runtime_env"] = runtime_env
        return _run_rank_remote.options(**opts).remote(launch)

    def poll(self, refs: list[ray.ObjectRef]) -> list[RankResult]:
        """Non-blocking status of each rank task, in order."""
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
        done_set = set(done)
        out = []
        for rank, ref in enumerate(refs):
            if ref not in done_set:
                out.append(RankResult(rank, RankStatus.RUNNING))
                continue
            try:
                value = ray.get(ref, timeout=0)
                status = RankStatus(value["status"])
                out.append(RankResult(rank, status, value.get("error"),
                                      Cause.SYSTEM_ERROR if status == RankStatus.SYSTEM_ERROR else None,
                                      value.get("result")))
            except ray.exceptions.TaskCancelledError:
                out.append(RankResult(rank, RankStatus.CANCELLED))
            except Exception as exc:  # a failure Ray reports: worker/node died, OOM, ...
                out.append(RankResult(rank, RankStatus.SYSTEM_ERROR, f"{type(exc).__name__}: {exc}",
                                      failure_cause(exc)))
        return out

    def cancel(self, refs: list[ray.ObjectRef]) -> None:
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception as exc:
                log.debug("cancel: %s", exc)

    def watch(self, refs: list, callback) -> None:
        """Call ``callback()`` (from a Ray thread) when any of ``refs`` completes, so the control loop
        reacts to a finished rank or a ready placement group at once instead of at its next tick."""
        for ref in refs:
            try:
                ref.future().add_done_callback(lambda _f: callback())
            except Exception as exc:  # the periodic tick still sees it
                log.debug("watch: %s", exc)

    # ------------------------------------------------------------- packages
    def pin_uris(self, uris: list[str], expiration_s: int) -> None:
        """Add a temporary GCS reference (``expiration_s``) to each uploaded runtime_env package."""
        from ray._private.runtime_env.packaging import package_exists, pin_runtime_env_uri

        for uri in uris:
            try:
                if package_exists(uri):
                    pin_runtime_env_uri(uri, expiration_s=int(expiration_s))
                else:
                    log.warning("runtime_env package %s is no longer in the GCS", uri)
            except Exception as exc:  # best effort: the job still holds its own reference
                log.warning("cannot pin %s: %s", uri, exc)

    # ------------------------------------------------------------- demand
    def request_resources(self, bundles: list[dict[str, float]]) -> None:
        """Tell Ray's autoscaler the cluster should hold these bundles (running and queued gangs);
        replaces the last request; [] clears it (idle nodes are then released)."""
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[dict(b) for b in bundles])

    # ------------------------------------------------------------- validation
    def check_entrypoint(self, entrypoint: str, runtime_env: dict | None, timeout_s: float) -> str | None:
        """None if ``entrypoint`` can be used, else why not: read from the job's own packages in the
        GCS when its source is there (``policy/entrypoint.py``: milliseconds), else imported on a
        worker with ``runtime_env`` (a cold worker: seconds)."""
        from ray.experimental.internal_kv import _internal_kv_get

        from raycluster.policy.entrypoint import UNKNOWN, read_entrypoint
        from raycluster.spec import gcs_uris

        try:
            blobs = [b for b in (_internal_kv_get(uri) for uri in gcs_uris(runtime_env)) if b]
        except Exception as exc:  # the import check on a worker decides
            log.debug("cannot read the job's packages: %s", exc)
            blobs = []
        verdict = read_entrypoint(entrypoint, blobs)
        if verdict != UNKNOWN:
            return verdict
        opts = {"runtime_env": runtime_env} if runtime_env else {}
        try:
            return ray.get(_check_entrypoint_remote.options(**opts).remote(entrypoint), timeout=timeout_s)
        except ray.exceptions.RuntimeEnvSetupError as exc:
            raise InvalidJobSpec(f"runtime_env cannot be set up: {str(exc)[-500:]}", field="runtime_env") from None
        except ray.exceptions.GetTimeoutError:
            raise ClusterUnavailable("timed out checking the entrypoint; the cluster may be busy") from None
