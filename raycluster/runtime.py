"""Connecting to a cluster and starting/finding the runtime actors; the Python client.

Owns: how a driver (CLI, tests, scripts) reaches a Ray cluster (explicit address, RAY_ADDRESS,
or the embedded local cluster's record in the state dir), creation of the named detached
actors (CheckpointManager, Coordinator) in the ``raycluster`` namespace, and ``Client`` — a
small synchronous API over the Coordinator handle that turns actor errors back into
raycluster's typed exceptions.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import ray

from raycluster import constants as C
from raycluster.errors import ClusterUnavailable, RayClusterError
from raycluster.spec import JobSpec, load_spec, parse_spec
from raycluster.state import JobState

log = logging.getLogger(__name__)


def local_cluster_address(state_dir: Path) -> str | None:
    record = Path(state_dir) / "local-cluster" / "cluster.json"
    try:
        return json.loads(record.read_text())["address"]
    except (OSError, ValueError, KeyError):
        return None


def resolve_address(address: str | None, state_dir: Path) -> str:
    addr = address or os.environ.get("RAY_ADDRESS") or local_cluster_address(state_dir)
    if not addr:
        raise ClusterUnavailable(
            f"no cluster to talk to: start one with `raycluster up --local`, or pass --address / set RAY_ADDRESS "
            f"(no local cluster record under {state_dir})")
    return addr


def connect(address: str | None = None, state_dir: Path | None = None) -> None:
    """ray.init against the cluster (idempotent) in the raycluster namespace."""
    if ray.is_initialized():
        return
    state_dir = Path(state_dir or C.state_dir())
    addr = resolve_address(address, state_dir)
    if addr == local_cluster_address(state_dir):  # our embedded cluster: use its auth token
        from raycluster.localcluster import apply_driver_auth

        apply_driver_auth(state_dir)
    try:
        ray.init(address=addr, namespace=C.NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError) as exc:
        raise ClusterUnavailable(f"cannot connect to Ray at {addr}: {exc}") from None


def start_runtime(state_dir: Path, timeout_s: float = 120.0):
    """Create (or find) the runtime actors; return the Coordinator handle once it answers."""
    from raycluster.checkpoint import get_or_create_checkpoint_manager
    from raycluster.coordinator import Coordinator

    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    cm = get_or_create_checkpoint_manager(state_dir)
    coord = Coordinator.options(name=C.COORDINATOR_NAME, namespace=C.NAMESPACE, lifetime="detached",
                                get_if_exists=True, resources=C.HEAD_NODE_RESOURCE).remote(str(state_dir))
    ray.get([cm.ping.remote(), coord.ping.remote()], timeout=timeout_s)
    return coord


def coordinator_handle():
    try:
        return ray.get_actor(C.COORDINATOR_NAME, namespace=C.NAMESPACE)
    except ValueError:
        raise ClusterUnavailable("the raycluster runtime is not running on this cluster (no Coordinator actor);"
                                 " start it with `raycluster up`") from None


def checkpoint_manager_handle():
    try:
        return ray.get_actor(C.CHECKPOINT_MANAGER_NAME, namespace=C.NAMESPACE)
    except ValueError:
        raise ClusterUnavailable("no CheckpointManager actor on this cluster") from None


def _unwrap(exc: BaseException) -> BaseException:
    """Turn a RayTaskError around one of our exceptions back into that exception."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, RayClusterError):
        return cause
    if isinstance(exc, RayClusterError):
        return exc
    if isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
        return ClusterUnavailable(f"the Coordinator is not reachable right now: {exc}")
    return exc


class Client:
    """Synchronous client over the Coordinator actor (used by the CLI, tests and benchmarks)."""

    def __init__(self, handle=None, timeout_s: float = 120.0):
        self._h = handle or coordinator_handle()
        self._timeout_s = timeout_s

    def _call(self, method: str, *args, **kwargs) -> Any:
        try:
            return ray.get(getattr(self._h, method).remote(*args, **kwargs), timeout=self._timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ClusterUnavailable(f"the Coordinator did not answer {method} in {self._timeout_s:.0f}s") from None
        except Exception as exc:
            unwrapped = _unwrap(exc)
            if unwrapped is exc:
                raise
            raise unwrapped from None

    def submit(self, spec: JobSpec | dict | str | Path, idempotency_key: str | None = None) -> dict:
        if isinstance(spec, Path):
            spec = load_spec(spec)
        if isinstance(spec, JobSpec):
            spec = spec.model_dump(mode="json")
        elif isinstance(spec, dict):
            parse_spec(spec)  # fail fast, locally, with the same error the Coordinator would give
        # a key per submit makes the actor-level retry (max_task_retries) safe from duplicates
        return self._call("submit", spec, idempotency_key or f"client-{uuid.uuid4().hex}")

    def get(self, job_id: str) -> dict:
        return self._call("get", job_id)

    def list(self, states: list[str] | None = None, tenant: str | None = None, limit: int | None = None,
             offset: int = 0) -> list[dict]:
        return self._call("list", states, tenant, limit, offset)

    def cancel(self, job_id: str) -> dict:
        return self._call("cancel", job_id)

    def metrics(self, job_id: str, limit: int = 1000) -> list[dict]:
        return self._call("metrics", job_id, limit)

    def logs(self, job_id: str, tail_lines: int = 200) -> list[dict]:
        """Last lines of each rank's log: ``[{"attempt", "rank", "lines"}, ...]``."""
        return self._call("logs", job_id, tail_lines)

    def cluster_status(self) -> dict:
        return self._call("cluster_status")

    def checkpoints(self, job_id: str) -> list[dict]:
        return ray.get(checkpoint_manager_handle().list.remote(job_id), timeout=self._timeout_s)

    def wait(self, job_ids: list[str], timeout_s: float = 600.0, poll_s: float = 0.5,
             on_poll: Callable[[list[dict]], None] | None = None) -> list[dict]:
        return wait_for_jobs(self.get, job_ids, timeout_s, poll_s, on_poll)


def wait_for_jobs(get: Callable[[str], dict], job_ids: list[str], timeout_s: float = 600.0, poll_s: float = 0.5,
                  on_poll: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Poll ``get`` until every job is terminal (SUCCEEDED/FAILED/CANCELLED) or the timeout passes.
    While the control plane is unavailable (e.g. the Coordinator restarting) it keeps waiting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            jobs = [get(j) for j in job_ids]
        except ClusterUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(poll_s)
            continue
        if on_poll:
            on_poll(jobs)
        if all(JobState(j["state"]).terminal for j in jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(poll_s)
