"""The Ray client: connecting a driver to a cluster, and ``Client`` over the runtime actors.

Owns: how a driver (CLI, tests, scripts, ``python -m raycluster.submit``) reaches a Ray cluster —
an explicit address, ``RAY_ADDRESS``, or the embedded local cluster's record in the state dir, with
that cluster's Ray auth — and ``Client``: synchronous calls on the Coordinator and CheckpointManager
actors that turn actor errors back into raycluster's typed exceptions.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import ray

from raycluster import constants as C
from raycluster.client.base import ClientBase
from raycluster.control.handles import get_handle
from raycluster.errors import ClusterUnavailable, RayClusterError
from raycluster.provision.auth import apply_driver_auth, local_cluster_address


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
        apply_driver_auth(state_dir)
    try:
        ray.init(address=addr, namespace=C.NAMESPACE, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError) as exc:
        raise ClusterUnavailable(f"cannot connect to Ray at {addr}: {exc}") from None


def unwrap(exc: BaseException) -> BaseException:
    """Turn a RayTaskError around one of our exceptions back into that exception."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, RayClusterError):
        return cause
    if isinstance(exc, RayClusterError):
        return exc
    if isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
        return ClusterUnavailable(f"the runtime actor is not reachable right now: {exc}")
    return exc


class Client(ClientBase):
    """Synchronous client over the runtime actors (used by the CLI, tests and benchmarks)."""

    key_prefix = "client"

    def __init__(self, handle=None, timeout_s: float = 120.0):
        self._h = handle or get_handle(C.COORDINATOR_NAME)
        self._timeout_s = timeout_s

    def _call(self, method: str, *args, actor=None) -> Any:
        actor = self._h if actor is None else actor
        try:
            return ray.get(getattr(actor, method).remote(*args), timeout=self._timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ClusterUnavailable(f"the runtime did not answer {method} in {self._timeout_s:.0f}s") from None
        except Exception as exc:
            unwrapped = unwrap(exc)
            if unwrapped is exc:
                raise
            raise unwrapped from None

    def _submit(self, spec: dict, idempotency_key: str) -> dict:
        return self._call("submit", spec, idempotency_key)

    def package_store(self):
        from raycluster.client.packages import GcsPackages

        return GcsPackages()

    def _submit_many(self, items: list[dict]) -> list[dict]:
        return self._call("submit_many", items)

    def get(self, job_id: str) -> dict:
        return self._call("get", job_id)

    def list(self, states: list[str] | None = None, tenant: str | None = None, limit: int | None = None,
             offset: int = 0, newest_first: bool = False) -> list[dict]:
        return self._call("list", states, tenant, limit, offset, newest_first)

    def cancel(self, job_id: str) -> dict:
        return self._call("cancel", job_id)

    def metrics(self, job_id: str, limit: int = 1000) -> list[dict]:
        return self._call("metrics", job_id, limit)

    def logs(self, job_id: str, tail_lines: int = 200, since: dict[str, int] | None = None) -> list[dict]:
        """Last lines of each rank's log: ``[{"attempt", "rank", "lines", "offset"}, ...]`` (with ``since``,
        the lines after those offsets)."""
        return self._call("logs", job_id, tail_lines, since)

    def cluster_status(self) -> dict:
        return self._call("cluster_status")

    def trials(self, job_id: str, limit: int = 1000, offset: int = 0, failed_only: bool = False) -> dict:
        """A sweep's per-trial results and summary."""
        return self._call("list_trials", job_id, limit, offset, failed_only)

    def rentals(self, include_released: bool = False) -> list[dict]:
        return self._call("rentals", include_released)

    def events(self, limit: int = 100) -> list[dict]:
        return self._call("events", limit)

    def set_budget(self, usd_per_hour: float | None) -> dict:
        """Change the hourly cap at run time (None: back to the config's); the cluster's cost after."""
        return self._call("set_budget", usd_per_hour)

    def health(self) -> list[dict]:
        """Every node's health verdict, score, reasons, drain state and newest sample."""
        return self._call("health")

    def drain(self, node_id: str, reason: str | None = None) -> dict:
        return self._call("drain", node_id, reason)

    # (through Ray the caller is the cluster's operator: an admin)
    def tokens_create(self, name: str, tenant: str | None, role: str) -> dict:
        return self._call("tokens_create", name, tenant, role, "operator")

    def tokens_list(self, include_revoked: bool = False) -> list[dict]:
        return self._call("tokens_list", include_revoked)

    def tokens_rotate(self, token_id: str) -> dict:
        return self._call("tokens_rotate", token_id)

    def tokens_revoke(self, token_id: str) -> dict:
        return self._call("tokens_revoke", token_id)

    def audit_trail(self, limit: int = 100, tenant: str | None = None) -> list[dict]:
        return self._call("audit_trail", limit, tenant)

    def undrain(self, node_id: str) -> dict:
        return self._call("undrain", node_id)

    def _call_schedules(self, method: str, *args):
        return self._call(method, *args)

    def tenants(self) -> dict:
        """Each tenant's quota, what it holds, queued jobs, decayed usage and fair-share factor."""
        return self._call("tenants")

    def checkpoints(self, job_id: str) -> list[dict]:
        return self._call("list", job_id, actor=get_handle(C.CHECKPOINT_MANAGER_NAME))
